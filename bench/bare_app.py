"""The reference for target 1: a bare Flask JSON endpoint and nothing else.

It parses the JSON body, as any real endpoint must, and answers like ours.
Served by bench/run.sh with the same gunicorn settings as the app.
"""

from flask import Flask, request

app = Flask(__name__)


@app.post("/api/analytics/track")
def track():
    """Parse the body and acknowledge it."""
    request.get_json(force=True)
    return {"success": True}, 201
