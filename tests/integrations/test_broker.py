"""The Redis broker transport (marketplace/integrations/broker.py) against the real Redis: one client per channel,
and messages still go through kombu unchanged."""

from __future__ import annotations

import uuid

import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import filesystem as kombu_filesystem

from marketplace.celery import app
from marketplace.integrations import broker


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
