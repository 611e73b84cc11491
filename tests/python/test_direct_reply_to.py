"""Direct reply-to (amq.rabbitmq.reply-to), as RabbitMQ does it. Each also
passes against RabbitMQ (WARREN_TEST_ADDR)."""
import pika
import pika.exceptions as pe
import pytest

REPLY_TO = "amq.rabbitmq.reply-to"


def test_request_reply_round_trip(broker, conn, name):
    # Server side, on its own connection.
    server = pika.BlockingConnection(broker.params())
    sch = server.channel()
    sch.queue_declare(name, exclusive=True)

    ch = conn.channel()
    replies = []
    ch.basic_consume(REPLY_TO, lambda c, m, p, b: replies.append((b, p.correlation_id)), auto_ack=True)
    ch.basic_publish("", name, b"ping", pika.BasicProperties(reply_to=REPLY_TO, correlation_id="c1"))

    m, props, body = None, None, None
    for _ in range(50):
        m, props, body = sch.basic_get(name, auto_ack=True)
        if m:
            break
        server.sleep(0.02)
    assert body == b"ping"
    assert props.reply_to.startswith(REPLY_TO + ".")
    sch.basic_publish("", props.reply_to, b"pong", pika.BasicProperties(correlation_id=props.correlation_id))
    for _ in range(50):
        conn.process_data_events(time_limit=0.05)
        if replies:
            break
    assert replies == [(b"pong", "c1")]
    server.close()


def test_reply_consumer_must_be_no_ack(conn):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)
        conn.process_data_events(time_limit=0.2)
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"


def test_publish_with_reply_to_needs_a_reply_consumer(conn, name):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pe.ChannelClosedByBroker) as e:
        ch.basic_publish("", name, b"x", pika.BasicProperties(reply_to=REPLY_TO))
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - fast reply consumer does not exist"


def test_reply_to_a_gone_requester_is_unroutable(broker, name):
    requester = pika.BlockingConnection(broker.params())
    rch = requester.channel()
    reply_name = []
    rch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    server = pika.BlockingConnection(broker.params())
    sch = server.channel()
    sch.queue_declare(name, exclusive=True)
    rch.basic_publish("", name, b"ping", pika.BasicProperties(reply_to=REPLY_TO))
    for _ in range(50):
        m, props, _ = sch.basic_get(name, auto_ack=True)
        if m:
            reply_name.append(props.reply_to)
            break
        server.sleep(0.02)
    requester.close()
    sch.confirm_delivery()
    with pytest.raises(pe.UnroutableError):
        sch.basic_publish("", reply_name[0], b"late", mandatory=True)
    server.close()
