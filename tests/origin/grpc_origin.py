#!/usr/bin/env python3
"""A gRPC server for lb's tests (python3-grpcio from Debian; messages are raw
bytes, no generated code).

    grpc_origin.py --name NAME [--listen 127.0.0.1:0] [--tls-cert F --tls-key F]
                   [--health-file F]

Prints "listening on HOST:PORT" once serving. Methods (service lbtest.Echo):
  Unary         answers b"NAME:" + the request
  ServerStream  request: total bytes (decimal text) and chunk size "N/C";
                streams harness-pattern bytes (i % 251) in chunks of C
  ClientStream  answers "LEN SHA256HEX" of everything received
  Bidi          echoes every message
  Fail          ends with status NOT_FOUND (5), message "no such thing: " + request
  Slow          sleeps the request's seconds (text), then answers b"late"
  Whoami        answers b"NAME"
grpc.health.v1.Health/Check: SERVING, unless --health-file holds NOT_SERVING
(read at every check; the service in the request is ignored).
"""

import argparse
import hashlib
import os
import sys
import time
from concurrent import futures

import grpc


def pattern(start, n):
    return bytes((i % 251) for i in range(start, start + n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--health-file")
    args = ap.parse_args()
    name = args.name.encode()

    def unary(request, context):
        return name + b":" + request

    def whoami(request, context):
        return name

    def server_stream(request, context):
        total, chunk = (int(x) for x in request.decode().split("/"))
        block = pattern(0, 251 * 1024)
        sent = 0
        while sent < total:
            n = min(chunk, total - sent)
            off = sent % 251
            if n <= len(block) - off:
                yield block[off:off + n]
            else:
                yield pattern(sent, n)
            sent += n

    def client_stream(request_iterator, context):
        h = hashlib.sha256()
        n = 0
        for m in request_iterator:
            h.update(m)
            n += len(m)
        return ("%d %s" % (n, h.hexdigest())).encode()

    def bidi(request_iterator, context):
        for m in request_iterator:
            yield m

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

    def slow(request, context):
        time.sleep(float(request.decode() or "1"))
        return b"late"

    def health(request, context):
        status = 1  # SERVING
        if args.health_file:
            try:
                with open(args.health_file) as f:
                    if f.read().strip() == "NOT_SERVING":
                        status = 2
            except OSError:
                pass
        return bytes([0x08, status])  # HealthCheckResponse { status = 1: enum }

    echo = grpc.method_handlers_generic_handler("lbtest.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Whoami": grpc.unary_unary_rpc_method_handler(whoami),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })
    health_service = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(health),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                         handlers=[echo, health_service],
                         options=[("grpc.so_reuseport", 0),
                                  ("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    if args.tls_cert:
        with open(args.tls_cert, "rb") as f:
            cert = f.read()
        with open(args.tls_key, "rb") as f:
            key = f.read()
        port = server.add_secure_port(args.listen, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(args.listen)
    if port == 0:
        print("cannot listen on %s" % args.listen, file=sys.stderr, flush=True)
        return 1
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print("listening on %s:%d" % (host, port), flush=True)
    server.wait_for_termination()  # (the test kills the process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
