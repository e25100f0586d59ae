# The demo app server (tests/origin/origin.py, Python standard library only)
# for docker/compose.yaml. Build context: the repository root.
FROM debian:12-slim

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*

COPY tests/origin/origin.py /opt/origin/origin.py

USER nobody
EXPOSE 9001
# origin.py exits on SIGTERM itself, so it can run as PID 1.
ENTRYPOINT ["python3", "/opt/origin/origin.py"]
CMD ["--name", "app", "--listen", "0.0.0.0:9001"]
