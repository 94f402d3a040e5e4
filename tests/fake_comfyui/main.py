"""A stand-in for ComfyUI's main.py: serves /system_stats and /free on --listen/--port, prints each
/free body to stdout (so a test reads it from the backend's output ring).

It parses the arguments swarmd passes as ComfyUI's own parser does (--listen defaults to 127.0.0.1, a bare
--listen means every address, --preview-method takes ComfyUI's choices, the last of a repeated option
wins; any other argument is accepted), and /system_stats reports its argv, the parsed values and the GPU
environment, so that a test sees exactly what it was started with."""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--preview-method", default="none", choices=["none", "auto", "latent2rgb", "taesd"])
args, unknown = parser.parse_known_args()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/system_stats":
            body = json.dumps({"system": {"python_version": sys.version, "argv": sys.argv,
                                          "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                          "rocr_visible_devices": os.environ.get("ROCR_VISIBLE_DEVICES"),
                                          "device_order": os.environ.get("CUDA_DEVICE_ORDER"),
                                          "listen": args.listen, "port": args.port,
                                          "preview_method": args.preview_method,
                                          "unknown_args": unknown}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if self.path == "/free":
            print("free", body.decode(), flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, *_args):
        pass


print(f"fake ComfyUI on {args.listen}:{args.port} cwd={os.getcwd()} unbuffered={os.environ.get('PYTHONUNBUFFERED')}",
      flush=True)
ThreadingHTTPServer((args.listen, args.port), Handler).serve_forever()
