"""A local stand-in for Twilio's REST API: records call updates (hang-up, redirect).

Run as ``python -m tests.twilio_rest_standin PORT LOGFILE``; prints ``ready`` on
stdout once listening, and appends one JSON line per request to LOGFILE.
"""

from __future__ import annotations

import base64
import json
import sys

from aiohttp import web


def make_app(log_path: str) -> web.Application:
    async def update_call(request: web.Request) -> web.Response:
        form = dict(await request.post())
        auth = request.headers.get("Authorization", "")
        user = ""
        if auth.startswith("Basic "):
            user = base64.b64decode(auth[6:]).decode().partition(":")[0]
        record = {
            "account": request.match_info["account"],
            "call": request.match_info["call"],
            "form": form,
            "user": user,
        }
        with open(log_path, "a") as log:
            log.write(json.dumps(record) + "\n")
        return web.json_response(
            {"sid": record["call"], "status": form.get("Status", "in-progress")}
        )

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", update_call)
    return app


async def _ready(_app: web.Application) -> None:
    print("ready", flush=True)


if __name__ == "__main__":
    application = make_app(sys.argv[2])
    application.on_startup.append(_ready)
    web.run_app(application, host="127.0.0.1", port=int(sys.argv[1]), print=None)
