"""One POST with a JSON body; prints the status code, a space and the body (any status).

usage: request.py URL JSON
"""
import sys
import urllib.error
import urllib.request

url, body = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=600) as res:
        print(res.status, res.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
