"""The Redis broker transport (marketplace/integrations/broker.py) against the real Redis: one client per channel,
and messages still go through kombu unchanged; direct publish writes what apply_async writes."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from functools import partial

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue
from kombu.common import Broadcast
from kombu.transport import filesystem as kombu_filesystem

from marketplace.celery import app
from marketplace.integrations import broker
from tests.inference.test_metering import _redis_that_stops_at_scripts


def test_celery_uses_the_transport_for_a_redis_broker():
    with app.connection_for_write() as connection:
        assert isinstance(connection.default_channel, broker.Channel)


def test_a_channel_reuses_one_client_and_messages_round_trip():
    name = f"test-broker-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), routing_key=name)
    with Connection(app.conf.broker_url, transport=broker.Transport) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second and isinstance(first, redis.Redis)
        producer = connection.Producer(serializer="json")
        for number in range(3):
            producer.publish({"n": number}, exchange=queue.exchange, routing_key=name, declare=[queue])
        received = []
        with connection.Consumer(queue, callbacks=[lambda body, message: (received.append(body), message.ack())]):
            while len(received) < 3:
                connection.drain_events(timeout=5)
        assert received == [{"n": 0}, {"n": 1}, {"n": 2}]
        with channel.conn_or_acquire() as again:
            assert again is first
        queue(channel).delete()


def test_the_client_follows_a_new_pool_after_kombu_drops_the_old_one():
    with Connection(app.conf.broker_url, transport=broker.Transport) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as before:
            pass
        channel._pool = None  # what kombu does when it disconnects its pools
        with channel.conn_or_acquire() as after:
            assert after is not before and after.connection_pool is channel.pool
            assert after.ping()


# --- filesystem (the embedded default) -----------------------------------------------------------------------


def _filesystem_connection(folder, transport) -> Connection:
    options = broker.filesystem_transport_options(folder)  # as settings/celery.py configures make run's broker
    return Connection("filesystem://", transport=transport, transport_options=options)


def _consumer_visible(folder, queue: str) -> list:
    """The files kombu's consumer would take for ``queue`` (its own name test)."""
    return [p for p in (folder / "out").iterdir() if p.name.partition(".")[2] == f"{queue}.msg"]


def test_a_filesystem_message_is_never_visible_to_the_consumer_before_it_is_complete(tmp_path, monkeypatch):
    seen_while_writing: list = []
    original = broker.dumps

    def dumps_and_look(payload):
        seen_while_writing.extend(_consumer_visible(tmp_path, "q"))  # the consumer polling at this very moment
        return original(payload)

    monkeypatch.setattr(broker, "dumps", dumps_and_look)
    monkeypatch.setattr(kombu_filesystem, "dumps", dumps_and_look)  # kombu's own _put fails this test
    with _filesystem_connection(tmp_path, broker.FilesystemTransport) as connection:
        connection.default_channel._put("q", {"body": "x"})

    assert seen_while_writing == []  # kombu's own transport has the empty file there already
    [message] = _consumer_visible(tmp_path, "q")
    assert message.read_bytes() == b'{"body": "x"}' and not list((tmp_path / "out").glob("*.partial"))


def test_filesystem_messages_round_trip_through_the_transport(tmp_path):
    queue = Queue("fsq", Exchange("fsq"), routing_key="fsq")
    with _filesystem_connection(tmp_path, broker.FilesystemTransport) as connection:
        producer = connection.Producer(serializer="json")
        for number in range(5):
            producer.publish({"n": number}, exchange=queue.exchange, routing_key="fsq", declare=[queue])
        received = []
        with connection.Consumer(queue, callbacks=[lambda body, message: (received.append(body), message.ack())]):
            while len(received) < 5:
                connection.drain_events(timeout=5)
    # Within one millisecond kombu's file names order by a random uuid: as with kombu's own transport, no FIFO.
    assert sorted(r["n"] for r in received) == [0, 1, 2, 3, 4]


# --- direct publish (RedisQueuePublisher) -----------------------------------------------------------------------


def _pushed(client: redis.Redis, queue: str) -> dict:
    [raw] = client.lrange(queue, 0, -1)
    client.delete(queue)
    return json.loads(raw)


def test_a_direct_message_is_the_one_apply_async_writes():
    from inference.tasks import inference_run_many

    queue = f"test-direct-{uuid.uuid4().hex[:8]}"
    publisher = broker.redis_queue_publisher(app=app, queue=queue)
    assert publisher is not None
    kwargs = {"requests": [{"payload": {"inputs": {"x": ["<f4", [1, 2], "AAAAAAAAAAA="]}}, "reply_to": "r"}]}
    client = publisher.client
    try:
        inference_run_many.apply_async(
            kwargs=kwargs, queue=queue, expires=30.0, argsrepr="", kwargsrepr="1 requests", ignore_result=True
        )
        celery_made = _pushed(client, queue)
        task_id = publisher.send(task=inference_run_many.name, kwargs=kwargs, expires_s=30.0, kwargsrepr="1 requests")
        ours = _pushed(client, queue)
    finally:
        client.delete(queue, f"_kombu.binding.{queue}")

    assert ours.keys() == celery_made.keys()
    body = {key: value for key, value in ours.items() if key not in ("body", "headers", "properties")}
    assert body == {key: value for key, value in celery_made.items() if key not in ("body", "headers", "properties")}
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(celery_made["body"]))
    # Per-message values: ids, the expiry instant, and Celery's reply address for results nobody waits for here.
    varying = {"id", "root_id", "expires", "correlation_id", "delivery_tag", "reply_to", "expiration"}
    for part in ("headers", "properties"):
        assert ours[part].keys() == celery_made[part].keys(), part
        for key, value in ours[part].items():
            if key not in varying:
                assert value == celery_made[part][key], (part, key)
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"] == task_id
    expires = datetime.fromisoformat(ours["headers"]["expires"])
    assert abs(expires - datetime.fromisoformat(celery_made["headers"]["expires"])) < timedelta(seconds=5)
    assert abs(int(ours["properties"]["expiration"]) - int(celery_made["properties"]["expiration"])) < 5000
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}


def _other_app(monkeypatch, **conf) -> Celery:
    """A Celery app of its own configuration: the test broker unless ``broker_url`` says otherwise."""
    conf = {"broker_url": app.conf.broker_url, **conf}
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery reads it before its configuration
    other = Celery("other", set_as_current=False)
    other.conf.update(conf)
    return other


def test_direct_publish_only_where_a_plain_redis_queue_takes_the_message(monkeypatch):
    configured = partial(_other_app, monkeypatch)

    assert broker.redis_queue_publisher(app=configured(), queue="q") is not None
    assert broker.redis_queue_publisher(app=configured(broker_url="filesystem://"), queue="q") is None
    assert broker.redis_queue_publisher(app=configured(broker_url="amqp://guest@127.0.0.1//"), queue="q") is None
    prefixed = configured(broker_transport_options={"global_keyprefix": "tenant:"})
    assert broker.redis_queue_publisher(app=prefixed, queue="q") is None
    assert broker.redis_queue_publisher(app=configured(task_always_eager=True), queue="q") is None
    assert broker.redis_queue_publisher(app=configured(task_serializer="pickle"), queue="q") is None
    assert broker.redis_queue_publisher(app=configured(task_compression="gzip"), queue="q") is None
    fanout = configured(task_queues=[Broadcast("b", routing_key="b")])
    assert broker.redis_queue_publisher(app=fanout, queue="b") is None
    topic = configured(task_queues=[Queue("t", Exchange("t", type="topic"), routing_key="t.#")])
    assert broker.redis_queue_publisher(app=topic, queue="t") is None


def test_a_direct_send_to_a_stopped_redis_raises_a_connection_error(monkeypatch):
    other = _other_app(monkeypatch, broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    publisher = broker.redis_queue_publisher(app=other, queue="q")
    with pytest.raises(redis.ConnectionError):
        publisher.send(task="t", kwargs={}, expires_s=1.0)


def test_a_direct_send_to_a_hung_redis_fails_after_its_timeout(monkeypatch):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        threading.Thread(target=_redis_that_stops_at_scripts, args=(listener,), daemon=True).start()
        other = _other_app(monkeypatch, broker_url=f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        publisher = broker.redis_queue_publisher(app=other, queue="q", timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            publisher.send(task="t", kwargs={}, expires_s=1.0)
        assert 0.3 <= time.monotonic() - started < 3
