"""Container health checks: exit 0 when the service is healthy, 1 otherwise.

    python -m services.common.healthcheck 127.0.0.1:50000            # gRPC health: the server
    python -m services.common.healthcheck 127.0.0.1:50002 --service tensorflow.serving.PredictionService
    python -m services.common.healthcheck --http http://127.0.0.1:9104/metrics   # HTTP 200

Used by docker-compose.yml's healthchecks. Loads only grpc (no TensorFlow), so it answers fast.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", nargs="?", help="HOST:PORT of a gRPC server with the standard health service")
    parser.add_argument("--service", default="", help="the health service name to check ('' = the server)")
    parser.add_argument("--http", default=None, metavar="URL", help="check that GET URL answers 200 instead")
    parser.add_argument("--timeout-s", type=float, default=3.0, help="deadline (default: %(default)s)")
    args = parser.parse_args(argv)
    if (args.address is None) == (args.http is None):
        parser.error("give either HOST:PORT or --http URL")
    if args.http:
        try:
            with urllib.request.urlopen(args.http, timeout=args.timeout_s) as response:
                healthy = response.status == 200
        except OSError as error:
            print(f"unhealthy: {args.http}: {error}", file=sys.stderr)
            return 1
    else:
        from services.common.channels import is_serving, make_channel

        with make_channel(args.address) as channel:
            healthy = is_serving(channel, args.service, timeout_s=args.timeout_s)
    if not healthy:
        print(f"unhealthy: {args.http or args.address}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
