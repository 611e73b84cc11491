"""Resource alarms an operator drives: the free disk space limit, changed
live with `set_disk_free_limit` (warren ctl / rabbitmqctl). Passes against
RabbitMQ too (WARREN_TEST_ADDR; rabbitmqctl needs root or the rabbitmq user)."""
import pika

from conftest import wait_for


def test_disk_free_limit_blocks_and_unblocks_publishers(broker, name):
    c = pika.BlockingConnection(broker.params())
    events = []
    c.add_on_connection_blocked_callback(lambda _c, frame: events.append(("blocked", frame.method.reason)))
    c.add_on_connection_unblocked_callback(lambda _c, frame: events.append(("unblocked", None)))
    ch = c.channel()
    ch.queue_declare(name, exclusive=True)
    ch.basic_publish("", name, b"before")  # a publisher: the alarm is for it
    try:
        broker.ctl("set_disk_free_limit", "1000000GB")  # more than any disk has (RabbitMQ takes no TB)
        # RabbitMQ tells a publisher at its next publish; Warren may tell it at once.
        ch.basic_publish("", name, b"during")
        assert wait_for(lambda: (c.process_data_events(0), events)[1], timeout=30)
        assert events == [("blocked", "low on disk")]
    finally:
        broker.ctl("set_disk_free_limit", "50MB")
    assert wait_for(lambda: (c.process_data_events(0), len(events) == 2)[1], timeout=30)
    assert events[1] == ("unblocked", None)
    # Nothing was lost, and publishing goes on.
    ch.basic_publish("", name, b"after")
    assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 3)
    c.close()


def test_disk_free_limit_relative_to_memory(broker, name):
    """`mem_relative` takes a fraction of RAM; 0.0 never blocks anyone."""
    r = broker.ctl("set_disk_free_limit", "mem_relative", "0.0")
    assert r.returncode == 0
    broker.ctl("set_disk_free_limit", "50MB")
