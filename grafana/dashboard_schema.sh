#!/usr/bin/env bash
# Writes tests/data/grafana-schema/*.schema.json, the JSON schemas tests/test_dashboards.py validates the dashboards
# against: the dashboard and the options of each panel type the dashboards use, as Grafana publishes them in its
# own npm package @grafana/schema (types generated from Grafana's CUE kinds), turned into JSON Schema (draft 7).
#
#   bash grafana/dashboard_schema.sh     # needs node and npm; a panel type new to the dashboards goes in PANELS
#
# The versions are pinned: GRAFANA is the Grafana the dashboards target (docker-compose.yml's image).
set -euo pipefail

GRAFANA=11.3.0
GENERATOR=2.4.0  # ts-json-schema-generator (MIT)
TYPESCRIPT=5.9.3
PANELS="stat:StatPanelCfg timeseries:TimeSeriesPanelCfg bargauge:BarGaugePanelCfg table:TablePanelCfg barchart:BarChartPanelCfg"

out="$(cd "$(dirname "$0")/.." && pwd)/tests/data/grafana-schema"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-save --no-audit --no-fund --silent \
    "@grafana/schema@$GRAFANA" "ts-json-schema-generator@$GENERATOR" "typescript@$TYPESCRIPT"
raw=node_modules/@grafana/schema/dist/esm/raw
gen() { npx --no-install ts-json-schema-generator --no-type-check --path "$1" --type "$2" -o "$3"; }

mkdir -p "$out"
gen "$raw/dashboard/x/dashboard_types.gen.d.ts" Dashboard "$out/dashboard.schema.json"
for p in $PANELS; do
    gen "$raw/composable/${p%%:*}/panelcfg/x/${p##*:}_types.gen.d.ts" '*' "$out/${p%%:*}.schema.json"
done
echo "@grafana/schema $GRAFANA, ts-json-schema-generator $GENERATOR, typescript $TYPESCRIPT" >"$out/VERSION"
