"""The client side of bench/replay/run: timed polls, and a live stream's delays while polls run."""
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.request


def poll(port, branch, token):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/realtime/v1/changes?channel=branch:{branch}&after=0&limit=1000",
        headers={"Authorization": "Bearer " + token},
    )
    started = time.perf_counter()
    body = urllib.request.urlopen(request).read()
    return (time.perf_counter() - started) * 1000, len(json.loads(body)["events"])


def polls(port, branch, token, count=30):
    times = []
    for _ in range(count):
        elapsed, events = poll(port, branch, token)
        times.append(elapsed)
        time.sleep(0.25)  # within a user's poll budget (5 a second)
    print(f"  {events} events; median {statistics.median(times):.1f} ms, max {max(times):.1f} ms over {count} polls")


def live(port, branch, viewer, editor, plan, seconds=20.0):
    received = {}

    def stream():
        connection = http.client.HTTPConnection("127.0.0.1", int(port))
        connection.request("GET", f"/realtime/v1/plan/{plan}?table=task&event=INSERT", headers={"Authorization": "Bearer " + viewer})
        response = connection.getresponse()
        pending = b""
        while chunk := response.read1(65536):
            pending += chunk
            while b"\n\n" in pending:
                frame, pending = pending.split(b"\n\n", 1)
                for line in frame.split(b"\n"):
                    if line.startswith(b"data: "):
                        title = (json.loads(line[6:]).get("record") or {}).get("title", "")
                        if title.startswith("live-"):
                            received[title] = time.perf_counter()

    threading.Thread(target=stream, daemon=True).start()
    time.sleep(1)
    stop = time.perf_counter() + seconds
    poll_times = []

    def poller():
        while time.perf_counter() < stop:
            poll_times.append(poll(port, branch, viewer)[0])
            time.sleep(0.25)

    threading.Thread(target=poller, daemon=True).start()
    sent = {}
    number = 0
    while time.perf_counter() < stop:
        title = f"live-{number}"
        number += 1
        body = json.dumps({"plan_id": plan, "title": title, "starts_at": "2026-11-30T09:00:00Z", "ends_at": "2026-11-30T10:00:00Z"})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/rest/v1/tasks",
            data=body.encode(),
            method="POST",
            headers={"Authorization": "Bearer " + editor, "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request).read()
        sent[title] = time.perf_counter()
        time.sleep(0.1)
    time.sleep(3)
    delays = sorted((received[title] - at) * 1000 for title, at in sent.items() if title in received)
    if not delays:
        print(f"  live: none of {len(sent)} writes received")
        return
    quantile = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))]
    print(
        f"  live: {len(delays)}/{len(sent)} writes received; acknowledged -> frame p50 {quantile(0.5):.1f} ms, "
        f"p95 {quantile(0.95):.1f} ms, max {delays[-1]:.1f} ms"
    )
    summary = f": median {statistics.median(poll_times):.1f} ms, max {max(poll_times):.1f} ms" if poll_times else ""
    print(f"  meanwhile {len(poll_times)} polls from 0 completed{summary}")


if __name__ == "__main__":
    kind, *arguments = sys.argv[1:]
    {"polls": polls, "live": live}[kind](*arguments)
