# spend-exporter image: python:3.11-slim, runs as an unprivileged user, checks /-/healthy.
#
#   docker build -t spend-exporter .
#   docker run -v $PWD/config.yml:/etc/spend-exporter/config.yml:ro -v spend-cache:/var/lib/spend-exporter/data \
#     --env-file spend-exporter.env -p 9877:9877 spend-exporter
#
# Relative paths in the config (cache_path, FOCUS paths) are relative to the
# working directory, /var/lib/spend-exporter.

FROM python:3.11-slim AS build
WORKDIR /src
# uv, pinned (as in the Makefile): it installs exactly the versions in uv.lock, the ones CI passed with
RUN pip install --no-cache-dir uv==0.13.9
COPY pyproject.toml uv.lock README.md ./
COPY exporter ./exporter
# Every SDK (the [all] extra): one image serves any mix of sources. --locked fails the build if
# uv.lock no longer matches pyproject.toml, rather than resolving anew.
RUN UV_PROJECT_ENVIRONMENT=/opt/spend-exporter UV_PYTHON_DOWNLOADS=never \
    uv sync --locked --no-editable --no-cache --extra all --python /usr/local/bin/python3.11

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/spend-exporter/bin:$PATH
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin spend-exporter \
 && mkdir -p /etc/spend-exporter /var/lib/spend-exporter/data /var/lib/spend-exporter/examples/data \
 && chown -R 10001:10001 /var/lib/spend-exporter
COPY --from=build /opt/spend-exporter /opt/spend-exporter
WORKDIR /var/lib/spend-exporter
# A named volume mounted here starts with this directory's owner, so the
# cache is writable by the unprivileged user.
VOLUME /var/lib/spend-exporter/data
USER 10001:10001
EXPOSE 9877
# /-/healthy answers as soon as the process serves HTTP, before any refresh.
# With --web.config.file (TLS or basic auth) replace this check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9877/-/healthy', timeout=4).status != 200)"]
ENTRYPOINT ["spend-exporter"]
CMD ["run", "--config.file", "/etc/spend-exporter/config.yml"]
