"""The Redis broker transport (marketplace/integrations/broker.py) against the real Redis: one client per channel,
and messages still go through kombu unchanged."""

from __future__ import annotations

import uuid

import redis
from kombu import Connection, Exchange, Queue

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
