"""The integration tests' Alertmanager receiver: appends every webhook it gets, with the time it
got it, as one JSON line to a file. Started on the monitor host by tests/integration/test_monitoring.py.
usage: webhook_receiver.py ADDRESS PORT FILE"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(sys.argv[3], "a") as out:
            out.write(json.dumps({"received": time.time(), "path": self.path, "body": json.loads(body)}) + "\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer((sys.argv[1], int(sys.argv[2])), Receiver).serve_forever()
