#!/usr/bin/env python3
"""A hub-side consumer of dpsd's assignment feed (the README's example).

It declares a durable queue, binds it to the feed's topic exchange, and prints one JSON line
per event it has not seen before (events are deduplicated by their AMQP message_id, which is
the same for every re-publication of one assignment). A real consumer would create, update or
delete the device in its hub where this one prints, and acknowledge only after that worked.

    python3 -m pip install pika==1.4.4
    python3 examples/feed_consumer.py --binding 'hub-a.example.net.#'

Options: --url (default amqp://guest:guest@127.0.0.1:5672/%2f), --exchange (dps.assignments),
--queue (dps.consumer.example), --binding (repeatable; default '#', every hub and type),
--count N (exit after N new events), --idle SECONDS (exit after that long without one).
"""

import argparse
import json
import sys
import time

import pika


def main() -> int:
    args = parse_args()
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    # dpsd declares the exchange on start; declaring it here too (same arguments) lets the
    # consumer start first.
    channel.exchange_declare(args.exchange, exchange_type="topic", durable=True)
    channel.queue_declare(args.queue, durable=True)
    for binding in args.binding or ["#"]:
        channel.queue_bind(args.queue, args.exchange, routing_key=binding)
    channel.basic_qos(prefetch_count=100)
    print(json.dumps({"ready": args.queue}), flush=True)

    seen = set()
    new = 0
    last = time.monotonic()
    for method, properties, body in channel.consume(args.queue, inactivity_timeout=0.5):
        if method is None:
            if args.idle and time.monotonic() - last > args.idle:
                break
            continue
        last = time.monotonic()
        if properties.message_id not in seen:
            seen.add(properties.message_id)
            event = json.loads(body)
            # Here a hub would admit (device.assigned / device.reassigned) or remove
            # (device.deprovisioned) event["deviceId"] on event["iotHubHostName"].
            print(
                json.dumps(
                    {
                        "routingKey": method.routing_key,
                        "messageId": properties.message_id,
                        "contentType": properties.content_type,
                        "persistent": properties.delivery_mode == 2,
                        "timestamp": properties.timestamp,
                        "event": event,
                    }
                ),
                flush=True,
            )
            new += 1
        channel.basic_ack(method.delivery_tag)
        if args.count and new >= args.count:
            break
    channel.cancel()
    connection.close()
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    p.add_argument("--exchange", default="dps.assignments")
    p.add_argument("--queue", default="dps.consumer.example")
    p.add_argument("--binding", action="append")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--idle", type=float, default=0.0)
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
