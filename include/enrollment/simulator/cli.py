"""Command line of the four-region SAP Commerce simulator.

    python -m enrollment.simulator produce --rate 400000/min --duration 5m --faults 2%
    python -m enrollment.simulator produce --events 100000 --out run/  # files instead of Kafka
    python -m enrollment.simulator check run/  # validator vs expected outcomes

``produce`` sends to the region topics of the pipeline configuration (Kafka at
``--bootstrap`` or ``KAFKA_BOOTSTRAP_SERVERS``, with ``KAFKA_CLIENT_CONFIG``'s TLS and SASL
settings), keyed by partner id with Kafka's Java
partitioner (murmur2), and writes the expected-outcome file: one JSON line per message with its
outcome, reasons, fault and, for Kafka, partition and offset.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from enrollment.ingest.validation import validate_batch
from enrollment.simulator.faults import FaultRates, Message
from enrollment.simulator.generator import DEFAULT_START, Simulator, expected_line

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Producer
    from confluent_kafka import Message as KafkaMessage

    # What to do when Kafka has acknowledged (or refused) one of our messages.
    OnDelivered = Callable[[KafkaError | None, KafkaMessage, Message], None]

PROGRESS_EVERY_S = 2.0


def parse_rate(text: str) -> float | None:
    """'400000/min', '5000/s', '1.2M/min' or 'max' → events per second (None: as fast as
    possible)."""
    if text == "max":
        return None
    m = re.fullmatch(r"([\d.]+)([kKmM]?)/(s|sec|min|m|h)", text.replace("_", "").replace(",", ""))
    if not m:
        raise argparse.ArgumentTypeError(f"rate like 400000/min or 5000/s, not {text!r}")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}[m.group(2)]
    return value / {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[m.group(3)]


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(ms|s|m|h)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"duration like 30s, 5m or 1h, not {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def parse_share(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share between 0 and 100%, not {text!r}")
    return value


def _faults(args: argparse.Namespace) -> FaultRates:
    rates = FaultRates.mix(args.faults) if args.faults else FaultRates()
    for name in rates.as_dict():
        given = getattr(args, name)
        if given is not None:
            setattr(rates, name, given)
    return rates


class _Progress:
    def __init__(self, total: int | None) -> None:
        self.t0 = time.monotonic()
        self.last = self.t0
        self.total = total

    def tick(self, done: int, faults: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            elapsed = max(now - self.t0, 1e-9)
            of = f"/{self.total:,}" if self.total else ""
            print(
                f"[{elapsed:6.1f}s] {done:,}{of} events ({done / elapsed * 60:,.0f}/min),"
                f" {faults:,} with faults{extra}",
                file=sys.stderr,
                flush=True,
            )


def produce(args: argparse.Namespace) -> dict[str, Any]:
    rate = args.rate
    total = args.events or (int(rate * args.duration) if rate and args.duration else None)
    if total is None:
        raise SystemExit("give --events, or --rate with --duration")
    to_kafka = args.out is None
    start = (
        datetime.now(UTC)
        if args.start == "now" or (args.start is None and to_kafka)
        else (datetime.fromisoformat(args.start) if args.start else DEFAULT_START)
    )
    sim = Simulator(
        seed=args.seed,
        faults=_faults(args),
        v2_share=args.v2_share,
        start=start,
        events_per_second=rate or 20000.0,
        wall_clock=to_kafka and args.start in (None, "now"),
    )
    expected_path = Path(
        args.expected or (Path(args.out) / "expected.jsonl" if args.out else "expected.jsonl")
    )
    expected_path.parent.mkdir(parents=True, exist_ok=True)
    progress = _Progress(total)
    faults = 0
    with open(expected_path, "wb") as expected_file:
        if to_kafka:
            produced, faults = _to_kafka(sim, total, rate, args, expected_file, progress)
        else:
            produced, faults = _to_files(sim, total, Path(args.out), expected_file, progress)
    seconds = time.monotonic() - progress.t0
    progress.tick(produced, faults, force=True)
    summary = {
        "events": produced,
        "seconds": round(seconds, 3),
        "events_per_min": round(produced / seconds * 60),
        "faults": faults,
        "fault_rates": sim.faults.as_dict(),
        "seed": args.seed,
        "expected": str(expected_path),
        "target": "kafka" if to_kafka else str(args.out),
    }
    print(json.dumps(summary))
    return summary


def _to_kafka(
    sim: Simulator,
    total: int,
    rate: float | None,
    args: argparse.Namespace,
    expected_file: BinaryIO,
    progress: _Progress,
) -> tuple[int, int]:
    from confluent_kafka import Producer

    from enrollment.clients.kafka import KafkaSettings

    env = dict(os.environ)
    if args.bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap
    if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        raise SystemExit(
            "set --bootstrap or KAFKA_BOOTSTRAP_SERVERS"
            " (for the local stack: source .stack/stack.env)"
        )
    producer = Producer(
        KafkaSettings.from_env(env).producer(
            {
                # The Java client's partitioner, as SAP Commerce's producers use.
                "partitioner": "murmur2_random",
                "enable.idempotence": True,  # retries keep per-partner order and do not duplicate
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 500_000,
            }
        )
    )
    errors: list[str] = []

    def delivered(err: KafkaError | None, msg: KafkaMessage, message: Message) -> None:
        if err is not None:
            errors.append(str(err))
            return
        expected_file.write(expected_line(message, partition=msg.partition(), offset=msg.offset()))

    produced = faults = 0
    t0 = time.monotonic()
    pending = iter(sim)
    while produced < total or sim.held:
        target = total if rate is None else min(total, int(rate * (time.monotonic() - t0)) + 1)
        while produced < target:
            message = next(pending)
            faults += message.expected["fault"] is not None
            _send(producer, message, delivered)
            produced += 1
            if produced % 2000 == 0:
                producer.poll(0)
        if produced >= total:
            for message in sim.flush():  # events held back for out-of-order delivery go out last
                faults += 1
                _send(producer, message, delivered)
                produced += 1
        producer.poll(0)
        progress.tick(produced, faults, f", {len(producer)} in flight")
        if rate is not None and produced < total:
            time.sleep(0.002)
    left = producer.flush(60)
    if left or errors:
        raise SystemExit(
            f"kafka: {left} messages undelivered, {len(errors)} delivery errors"
            f" (first: {errors[:1]})"
        )
    return produced, faults


def _send(producer: Producer, message: Message, delivered: OnDelivered) -> None:
    def on_delivery(err: KafkaError | None, msg: KafkaMessage) -> None:
        delivered(err, msg, message)

    while True:
        try:
            producer.produce(
                message.topic, key=message.key, value=message.value, on_delivery=on_delivery
            )
            return
        except BufferError:
            producer.poll(0.05)


def _to_files(
    sim: Simulator, total: int, out: Path, expected_file: BinaryIO, progress: _Progress
) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [("seq", pa.int64()), ("topic", pa.string()), ("key", pa.binary()), ("value", pa.binary())]
    )
    produced = faults = 0
    with pq.ParquetWriter(out / "messages.parquet", schema) as writer:
        while produced < total:
            chunk = [next(sim) for _ in range(min(50_000, total - produced))]
            if produced + len(chunk) >= total:
                chunk += sim.flush()
            writer.write_table(
                pa.table(
                    {
                        "seq": [m.seq for m in chunk],
                        "topic": [m.topic for m in chunk],
                        "key": [m.key for m in chunk],
                        "value": [m.value for m in chunk],
                    },
                    schema=schema,
                )
            )
            for message in chunk:
                expected_file.write(expected_line(message))
                faults += message.expected["fault"] is not None
            produced += len(chunk)
            progress.tick(produced, faults)
    return produced, faults


def check(args: argparse.Namespace) -> int:
    """Feeds a file run through the validator as one batch and compares with its expected
    outcomes."""
    import pyarrow.parquet as pq

    folder = Path(args.folder)
    values = pq.read_table(folder / "messages.parquet", columns=["seq", "value"]).sort_by("seq")
    expected: dict[int, list[str]] = {}
    with open(folder / "expected.jsonl", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            expected[record["seq"]] = record["reasons"]
    t0 = time.monotonic()
    result = validate_batch(values.column("value").to_pylist())
    seconds = time.monotonic() - t0
    seqs = values.column("seq").to_pylist()
    got: dict[int, list[str]] = {seq: [] for seq in seqs}
    for row in result.quarantine.select(["source_index", "reasons"]).to_pylist():
        got[seqs[row["source_index"]]] = row["reasons"]
    mismatches = [
        (seq, expected.get(seq), got[seq]) for seq in seqs if expected.get(seq) != got[seq]
    ]
    print(
        f"{len(seqs):,} messages validated in {seconds:.2f} s: {result.valid.num_rows:,} valid,"
        f" {result.quarantine.num_rows:,} quarantined "
        f"({result.duplicates:,} duplicates); {len(mismatches)} differ from the expected outcomes"
    )
    for seq, want, have in mismatches[:20]:
        print(f"  seq {seq}: expected {want}, validator {have}")
    return 1 if mismatches or len(expected) != len(seqs) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m enrollment.simulator", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "produce", help="generate events into Kafka or files, with the expected-outcome file"
    )
    p.add_argument(
        "--rate",
        type=parse_rate,
        default=parse_rate("400000/min"),
        help="e.g. 400000/min, 5000/s, max (default 400000/min)",
    )
    p.add_argument("--duration", type=parse_duration, help="e.g. 5m (with --rate)")
    p.add_argument("--events", type=int, help="number of events (instead of --duration)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--faults", type=parse_share, help="total fault share with the default mix, e.g. 2%%"
    )
    for name in FaultRates().as_dict():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=parse_share,
            help=f"share of {name.replace('_', ' ')} faults (overrides the mix)",
        )
    p.add_argument(
        "--v2-share",
        type=parse_share,
        default=0.5,
        help="share of events on schema version 2 (default 50%%)",
    )
    p.add_argument(
        "--out", help="write messages.parquet and expected.jsonl here instead of producing to Kafka"
    )
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument(
        "--expected", help="expected-outcome file (default: expected.jsonl, or inside --out)"
    )
    p.add_argument(
        "--start",
        help=(
            "occurred_at of the first event: ISO time or 'now'"
            " (default: now for Kafka, a fixed time for files)"
        ),
    )
    c = sub.add_parser(
        "check", help="validate a file run as one batch and compare with its expected outcomes"
    )
    c.add_argument("folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "produce":
        produce(args)
        return 0
    return check(args)
