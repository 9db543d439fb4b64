"""``observer kis decode`` and ``observer sim`` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
from procs import OBSERVER, free_port, read_line
from websockets.asyncio.client import connect

from app.kis.credentials import simulator_credentials
from app.kis.protocol import H0STCNT0_FIELDS, render_control_reply, render_data_frame, render_pingpong

SAMPLE = (
    "005930^112616^62700^2^400^0.64^62700.41^62700^63000^62300^62700^62600^125^9694968^607878273600^25807^"
    "15918^-9889^93.01^4614191^4291558^1^0.45^63.03^090013^3^0^090646^5^-300^100741^2^400^20230324^20^N^"
    "71292^244009^2795345^2044512^0.16^5367918^180.61^0^^62700"
)
RECORD = SAMPLE.split("^")


def test_decode_names_every_field_reports_bad_lines_and_goes_on(tmp_path: Path) -> None:
    second = list(RECORD)
    second[13] = "9695000"
    capture = tmp_path / "capture.txt"
    capture.write_text(
        "\n".join(
            [
                render_control_reply(
                    "H0STCNT0", "005930", "OPSP0000", iv="55ce3d099479ce11", key="tvldhmfplvgcovaqrspclzhdotfzzequ"
                ),
                render_data_frame("H0STCNT0", [RECORD, second]),
                "0|H0STCNT0|001|005930^112616",
                render_pingpong("20230324112617"),
                "",
                render_data_frame("H0STCNT0", [[*RECORD, "2"]]),
                "garbage",
            ]
        )
        + "\n"
    )
    res = subprocess.run([*OBSERVER, "kis", "decode", str(capture)], capture_output=True, text=True, check=False)
    assert res.returncode == 1
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(d["line"], d["record_index"], d["cumulative_volume"]) for d in lines] == [
        (2, 0, 9694968),
        (2, 1, 9695000),
        (6, 0, 9694968),
    ]
    assert list(lines[0]["fields"]) == list(H0STCNT0_FIELDS)
    assert lines[0]["fields"]["MRKT_TRTM_CLS_CODE"] == "" and lines[0]["fields"]["VI_STND_PRC"] == "62700"
    assert "extra_fields" not in lines[0] and lines[2]["extra_fields"] == ["2"]
    errors = res.stderr.splitlines()
    assert errors[0] == "line 3: wrong_field_count: H0STCNT0 records have 2 fields, expected at least 46"
    assert errors[1].startswith("line 7: unknown_message:")
    assert errors[2] == (
        "3 records from 3 data frames; 1 control replies, 1 PINGPONG; 2 bad frames "
        "(unknown_message=1, wrong_field_count=1)"
    )


def test_decode_reads_stdin_and_exits_zero_when_all_is_well() -> None:
    res = subprocess.run(
        [*OBSERVER, "kis", "decode", "-"],
        input=render_data_frame("H0STCNT0", [RECORD]) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["symbol"] == "005930"


def test_sim_serves_the_protocol_and_stops_at_until_with_a_summary() -> None:
    rest, ws = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *OBSERVER,
            "sim",
            "--rest-port",
            str(rest),
            "--ws-port",
            str(ws),
            "--speed",
            "60",
            "--start",
            "09:00",
            "--until",
            "09:02",
            "--progress-every",
            "0.5",
            "--surge",
            "000660@09:00+5x10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        banner = read_line(proc, "sim: KIS REST on")
        assert f"http://127.0.0.1:{rest}" in banner and f"ws://127.0.0.1:{ws}" in banner

        async def subscribe_and_read() -> int:
            creds = simulator_credentials("main")
            body = {
                "grant_type": "client_credentials",
                "appkey": creds.app_key.get_secret_value(),
                "secretkey": creds.app_secret.get_secret_value(),
            }
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"http://127.0.0.1:{rest}/oauth2/Approval", json=body) as resp,
            ):
                approval = (await resp.json())["approval_key"]
            records = 0
            async with connect(f"ws://127.0.0.1:{ws}", ping_interval=None) as conn:
                await conn.send(
                    json.dumps(
                        {
                            "header": {
                                "approval_key": approval,
                                "custtype": "P",
                                "tr_type": "1",
                                "content-type": "utf-8",
                            },
                            "body": {"input": {"tr_id": "H0STCNT0", "tr_key": "000660"}},
                        }
                    )
                )
                while records < 50:
                    msg = await asyncio.wait_for(conn.recv(), 10)
                    if isinstance(msg, str) and msg.startswith("0|H0STCNT0|"):
                        records += int(msg.split("|")[2])
            return records

        assert asyncio.run(subscribe_and_read()) >= 50
        summary = read_line(proc, "sim: stopped at", deadline_s=60)
        assert "trades generated" in summary and "records sent" in summary
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sim_stops_cleanly_on_sigterm() -> None:
    rest, ws = free_port(), free_port()
    proc = subprocess.Popen(
        [*OBSERVER, "sim", "--rest-port", str(rest), "--ws-port", str(ws)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        read_line(proc, "sim: KIS REST on")
        proc.send_signal(signal.SIGTERM)
        read_line(proc, "sim: stopped at", deadline_s=30)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sim_rejects_a_bad_surge_spec_and_an_unknown_symbol() -> None:
    res = subprocess.run([*OBSERVER, "sim", "--surge", "005380 at nine"], capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert "SYMBOL@HH:MM+MINUTESxFACTOR" in res.stderr
    res = subprocess.run(
        [
            *OBSERVER,
            "sim",
            "--surge",
            "ZZZZZ9@09:05+5x10",
            "--rest-port",
            str(free_port()),
            "--ws-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert "surge symbol 'ZZZZZ9' is not in the universe" in res.stderr and "Traceback" not in res.stderr


def test_sim_on_a_busy_port_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run(
            [*OBSERVER, "sim", "--rest-port", str(port), "--ws-port", str(free_port())],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    assert res.returncode == 1
    assert res.stderr.startswith("error: simulator cannot listen on 127.0.0.1") and "Traceback" not in res.stderr
