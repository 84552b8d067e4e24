#!/usr/bin/env python3
"""A hub back end's consumer of the dpsd assignment feed (docs/assignment-feed.md).

Admits, moves and removes devices as dpsd assigns and deprovisions them. Needs pika
(`apt-get install python3-pika` or `pip install pika`).

    python3 feed_consumer.py hub-a.example.net      # the events of one hub
    python3 feed_consumer.py                        # the events of every hub

Settings from the environment: DPS_FEED_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
DPS_FEED_EXCHANGE (default dps.assignments), DPS_FEED_QUEUE (default: one durable queue per
hub argument, named hub-backend.<hub>).
"""

import json
import os
import sys

import pika

URL = os.environ.get("DPS_FEED_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
EXCHANGE = os.environ.get("DPS_FEED_EXCHANGE", "dps.assignments")
HUB = sys.argv[1] if len(sys.argv) > 1 else None
QUEUE = os.environ.get("DPS_FEED_QUEUE", f"hub-backend.{HUB or 'all'}")
# Routing keys are "<hub host name>.<type>", e.g. hub-a.example.net.device.assigned.
BINDING = f"{HUB}.#" if HUB else "#"

# Events are delivered at least once: remember what was handled (a real back end keeps this
# in its database, next to the device registry) and acknowledge only after acting.
handled = set()


def admit(event):
    auth = event["authentication"]
    if auth["type"] == "sas":
        keys = auth.get("symmetricKey")  # absent when dpsd runs with include_device_keys = false
        how = "symmetric key" + ("" if keys else " (keys not sent)")
    elif auth["type"] in ("selfSigned", "certificateAuthority"):
        how = "X.509 " + auth["x509Thumbprint"]["primaryThumbprint"]
    else:
        how = auth["type"]
    moved = event.get("previousIotHubHostName")
    print(
        f"admit {event['deviceId']} on {event['iotHubHostName']} by {how}"
        + (f", moved from {moved}" if moved else "")
        + (" (IoT Edge)" if event["iotEdge"] else ""),
        flush=True,
    )


def remove(event):
    print(
        f"remove {event['deviceId']} from {event['iotHubHostName']} ({event['reason']})",
        flush=True,
    )


def on_message(channel, method, properties, body):
    event = json.loads(body)
    if event.get("schemaVersion") != 1:
        # A document this consumer does not understand: leave it to a newer consumer.
        channel.basic_nack(method.delivery_tag, requeue=True)
        return
    if properties.message_id not in handled:
        if event["type"] in ("device.assigned", "device.reassigned"):
            admit(event)
        elif event["type"] == "device.deprovisioned":
            remove(event)
        handled.add(properties.message_id)
    channel.basic_ack(method.delivery_tag)


def main():
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    # The same declaration dpsd makes; declaring it here lets the consumer start first.
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare(QUEUE, durable=True)
    channel.queue_bind(QUEUE, EXCHANGE, routing_key=BINDING)
    channel.basic_qos(prefetch_count=100)
    channel.basic_consume(QUEUE, on_message)
    print(f"consuming {BINDING} from {EXCHANGE} through queue {QUEUE}", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        connection.close()


if __name__ == "__main__":
    main()
