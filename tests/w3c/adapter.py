# Test service for the W3C trace-context harness: for each callback the harness asks for, it
# calls the harness through tracegate (route /harness -> 127.0.0.1:7777), passing on every
# trace header line it received, so the harness checks what tracegate sends upstream.
import http.client, json, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
PROXY_PORT = int(sys.argv[1])
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get('content-length', 0))) or b'[]')
        for item in body:
            path = '/harness' + urllib.parse.urlsplit(item['url']).path
            data = json.dumps(item['arguments']).encode()
            conn = http.client.HTTPConnection('127.0.0.1', PROXY_PORT, timeout=5)
            conn.putrequest('POST', path)
            conn.putheader('content-type', 'application/json')
            conn.putheader('content-length', str(len(data)))
            for name, value in self.headers.items():
                if name.lower() in ('traceparent', 'tracestate'):
                    conn.putheader(name, value)
            conn.endheaders(data)
            conn.getresponse().read()
            conn.close()
        self.send_response(200); self.send_header('content-length', '0'); self.end_headers()
    def log_message(self, *a): pass
HTTPServer(('127.0.0.1', 5000), H).serve_forever()
