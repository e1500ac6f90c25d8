"""faceveil serve [--host 127.0.0.1] [--port 0] [--token T]: the local web page.

Binds to 127.0.0.1 by default, on ``--port`` or a free port, and prints the address. A host
other than localhost needs ``--token`` (or ``$FACEVEIL_SERVE_TOKEN``). Every temporary file
lives in one private folder, removed after each request and at exit. The page and the server
contact nothing else: the model hub is set offline (weights must be in the local cache).
"""

from __future__ import annotations

import argparse
import os
import sys

TOKEN_ENV = "FACEVEIL_SERVE_TOKEN"
MIN_TOKEN = 12


def register(sub: argparse._SubParsersAction) -> None:
    from faceveil.cli.common import add_model_args, add_scheme_args, positive_int
    from faceveil.web.limits import DEFAULT_MAX_FILES, DEFAULT_MAX_UPLOAD_MB
    from faceveil.data.photo_io import DEFAULT_MAX_PIXELS

    p = sub.add_parser("serve", help="a local web page to anonymize, preview, recover and verify photos in the browser")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                   "any other needs --token)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    p.add_argument("--token", default=None, help=f"a secret every request must carry (at least {MIN_TOKEN} characters; "
                   f"default ${TOKEN_ENV}, which other users cannot see in ps); open the printed address once and the "
                   "page keeps it in a cookie")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"the most one request may upload, all files together (default {DEFAULT_MAX_UPLOAD_MB})")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger photos (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-files", type=positive_int, default=DEFAULT_MAX_FILES,
                   help=f"files per request (default {DEFAULT_MAX_FILES})")
    p.add_argument("--queue", type=positive_int, default=4, help="jobs that may wait behind the running one (default 4); "
                   "more are refused until one is done")
    g = p.add_argument_group("copies without a record (pixel-only recovery), as for recover")
    g.add_argument("--scales", default="1,2", metavar="S[,S...]",
                   help="resize factors to search for marks: 2 reads a copy shrunk to 1/2 (default 1,2)")
    g.add_argument("--inversion-steps", type=positive_int, default=200,
                   help="decoder inversion steps per face (default 200; more is slower and closer)")
    add_scheme_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import atexit
    import shutil
    import signal
    import socket
    import tempfile
    from pathlib import Path

    from faceveil.errors import InputError
    from faceveil.web.app import ServerConfig, create_app, is_local
    from faceveil.web.actions import Engine
    from faceveil.web.jobs import JobQueue
    from faceveil.web.limits import Limits

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_local(args.host) and not token:
        raise InputError(f"--host {args.host} makes the page reachable from other machines: give --token (or ${TOKEN_ENV})")
    if token is not None and len(token) < MIN_TOKEN:
        raise InputError(f"--token is too short: use at least {MIN_TOKEN} characters")
    if not 0 <= args.port < 65536:
        raise InputError(f"--port {args.port}: expected 0 (a free port) to 65535")
    if args.max_upload_mb <= 0:
        raise InputError("--max-upload-mb must be positive")
    # Nothing but this machine: weights come from the local cache, no telemetry.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    import uvicorn

    workdir = Path(tempfile.mkdtemp(prefix="faceveil-serve-"))  # mode 0700
    atexit.register(shutil.rmtree, workdir, True)
    # Upload spools, caches and libraries' own files too (onnxruntime writes $TMPDIR/.ses at import):
    # one private folder for everything, removed at exit.
    tempfile.tempdir = os.environ["TMPDIR"] = str(workdir)
    from faceveil.cli.recover_pixels import parse_scales

    engine = Engine(args.backbone, args.device, args.dtype, args.batch_size, args.scheme, args.steps, args.transform,
                    threads=args.threads, inversion_steps=args.inversion_steps, scales=parse_scales(args.scales),
                    compile_unet=args.compile)
    config = ServerConfig(host=args.host, token=token, workdir=workdir, max_waiting=args.queue, backbone=args.backbone,
                          limits=Limits(args.max_upload_mb, args.max_pixels, args.max_files))
    jobs = JobQueue(args.queue)
    app = create_app(config, engine, jobs)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(128)  # connections wait from now on, so the printed address works at once
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                                           lifespan="off", timeout_graceful_shutdown=5))
    print(f"faceveil serve: {url}  (backbone {args.backbone}; Ctrl-C to stop)", flush=True)
    def stop(signum, frame):  # uvicorn shuts down gracefully, then raises the signal it caught again here
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        jobs.close()
        sock.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print("faceveil serve: stopped", file=sys.stderr, flush=True)
    return 0
