"""Take the README's screenshots of the dashboard: ``python docs/img/screenshots.py``.

Starts a server on 127.0.0.1 (a temporary data dir, the test users), queues a few jobs (one logs
a training curve through ``fetchml.track``), and saves ``docs/img/queue.png`` and
``docs/img/job.png`` from headless Chromium.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))
from helpers.browser import api_call, open_browser, wait_for  # noqa: E402
from helpers.gateway import HIGH_LIMITS, ServerThread, Users, make_server_config  # noqa: E402

TRAIN = """
import math, time
from fetchml import track
track.log_params({"lr": LR, "model": "resnet18"})
for step in range(300):
    loss = 2.3 * math.exp(-step * LR * 30) + 0.05 * math.sin(step / 7) ** 2
    track.log({"loss": loss, "val/acc": 1 - loss / 2.5}, step=step)
    if step % 30 == 0:
        print(f"epoch {step // 30}: loss {loss:.4f}", flush=True)
time.sleep(SLEEP)
"""


def main() -> None:
    users = Users()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerThread(make_server_config(Path(tmp), users, limits=HIGH_LIMITS, cpus=4)) as server,
    ):
        base = server.base

        def submit(key: str, **spec: object) -> int:
            job_id: int = api_call(base, "POST", "/api/v1/jobs", key, spec)["job"]["id"]
            return job_id

        for n, lr in enumerate((0.01, 0.003, 0.001)):
            code = TRAIN.replace("LR", repr(lr)).replace("SLEEP", "0" if n == 0 else "600")
            submit(
                users.alice,
                name=f"resnet lr={lr}",
                experiment="sweep",
                tags=["vision"],
                command=[sys.executable, "-c", code],
                resources={"cpus": 1, "memory_mb": 1024},
            )
        submit(
            users.bob,
            name="bert finetune",
            experiment="nlp",
            priority=7,
            command=["sleep", "600"],
            resources={"cpus": 2, "memory_mb": 2048},
        )
        submit(users.bob, name="eval nightly", command=["sleep", "600"], resources={"cpus": 4})
        with open_browser(1400, 820) as browser:
            browser.sign_in(base, users.admin)
            wait_for(
                lambda: browser.js("return document.querySelectorAll('tr[data-job]').length") == 5
            )
            time.sleep(2)
            browser.screenshot(str(HERE / "queue.png"))
            browser.get(f"{base}/#/job/1")
            wait_for(lambda: "succeeded" in browser.text(".job-head"), within=30)
            browser.js("document.getElementById('tab-metrics').click()")
            wait_for(
                lambda: browser.js("return document.querySelectorAll('.chart canvas').length") >= 2
            )
            time.sleep(1)
            browser.screenshot(str(HERE / "job.png"))
            for job_id in range(2, 6):
                api_call(base, "POST", f"/api/v1/jobs/{job_id}/cancel", users.admin)


if __name__ == "__main__":
    main()
