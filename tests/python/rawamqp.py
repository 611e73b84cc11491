"""Minimal raw AMQP 0-9-1 client for bad-input tests: sends exactly the bytes a test wants."""
import socket
import struct


def frame(ftype, ch, payload):
    return struct.pack(">BHI", ftype, ch, len(payload)) + payload + b"\xce"


def shortstr(x):
    return bytes([len(x)]) + x


def longstr(x):
    return struct.pack(">I", len(x)) + x


def method(ch, cls, mid, args=b""):
    return frame(1, ch, struct.pack(">HH", cls, mid) + args)


class Raw:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=5)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_frame(self):
        while True:
            if len(self.buf) >= 7:
                t, ch, size = struct.unpack(">BHI", self.buf[:7])
                if len(self.buf) >= size + 8:
                    payload = self.buf[7:7 + size]
                    self.buf = self.buf[size + 8:]
                    return t, ch, payload
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def read_method(self):
        while True:
            f = self.read_frame()
            if f is None:
                return None
            t, ch, p = f
            if t == 1:
                return ch, struct.unpack(">HH", p[:4]), p[4:]

    def handshake(self, heartbeat=0):
        self.send(b"AMQP\x00\x00\x09\x01")
        self.read_method()  # start
        start_ok = struct.pack(">I", 0) + shortstr(b"PLAIN") + longstr(b"\0guest\0guest") + shortstr(b"en_US")
        self.send(method(0, 10, 11, start_ok))
        self.read_method()  # tune
        # tune-ok and open in one write: two small writes in a row wait for
        # the broker's delayed ACK (Nagle), ~40 ms a connection.
        self.send(method(0, 10, 31, struct.pack(">HIH", 2047, 131072, heartbeat))
                  + method(0, 10, 40, shortstr(b"/") + shortstr(b"") + b"\0"))
        assert self.read_method()[1] == (10, 41)

    def open_channel(self, ch=1):
        self.send(method(ch, 20, 10, shortstr(b"")))
        assert self.read_method()[1] == (20, 11)

    def expect_close(self):
        """(channel, code, text, class, method) of the close the broker sends, or None."""
        try:
            while True:
                m = self.read_method()
                if m is None:
                    return None
                ch, ids, args = m
                if ids in ((10, 50), (20, 40)):
                    code = struct.unpack(">H", args[:2])[0]
                    n = args[2]
                    text = args[3:3 + n]
                    try:
                        text = text.decode()
                    except UnicodeDecodeError:
                        pass  # left as bytes, as pika leaves them
                    cls, mid = struct.unpack(">HH", args[3 + n:7 + n])
                    return ch, code, text, cls, mid
        except (ConnectionResetError, socket.timeout):
            return None
