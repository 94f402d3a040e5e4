"""A stand-in for ComfyUI's main.py: serves /system_stats and /free on --listen/--port, prints each
/free body to stdout (so a test reads it from the backend's output ring)."""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--listen", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--preview-method", default="none")
args, unknown = parser.parse_known_args()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/system_stats":
            body = json.dumps({"system": {"python_version": sys.version, "argv": sys.argv,
                                          "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                          "device_order": os.environ.get("CUDA_DEVICE_ORDER")}}).encode()
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
