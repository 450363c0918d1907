"""One POST with a JSON body; prints the status code, a space and the body (any status).

usage: request.py URL JSON [API_KEY]
"""
import sys
import urllib.error
import urllib.request

url, body = sys.argv[1], sys.argv[2]
headers = {"Content-Type": "application/json"}
if len(sys.argv) > 3:
    headers["Authorization"] = "Bearer " + sys.argv[3]
req = urllib.request.Request(url, data=body.encode(), headers=headers)
try:
    with urllib.request.urlopen(req, timeout=600) as res:
        print(res.status, res.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
