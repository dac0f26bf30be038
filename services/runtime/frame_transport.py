"""Camera frames over ZeroMQ, from capture processes to the aggregator.

Wire format: :mod:`services.runtime.frame_wire` (a two-part message, header JSON + JPEG).

Topology: the aggregator binds one PULL socket; each capture connects a PUSH socket to it.
Cameras therefore come and go without the aggregator knowing them in advance, and a restarted
aggregator is reconnected to automatically. The sender never blocks: with ``ZMQ_IMMEDIATE``
a message is refused (not queued) while no aggregator is connected, and a small send
high-water mark refuses it while the aggregator is slow; the caller keeps its own bounded
newest-wins queue and counts what it drops.
"""

from __future__ import annotations

import zmq

from services.runtime.frame_wire import EncodedFrame, encode_frame


class FrameSender:
    """A PUSH socket connected to the aggregator; :meth:`try_send` never blocks."""

    def __init__(
        self,
        endpoint: str,
        send_hwm: int = 4,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        # Refuse rather than queue while no aggregator is connected: frames queued for a
        # peer that may never come would be stale when it does.
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise ValueError(
                f"cannot connect to aggregator endpoint {endpoint!r} ({exc}); "
                "write it as tcp://HOST:PORT (DEPOTWATCH_CAPTURE__AGGREGATOR_ENDPOINT)"
            ) from None

    def try_send(self, frame: EncodedFrame) -> bool:
        """Send now if the aggregator can take it; False when it cannot (nothing is queued)."""
        try:
            self._sock.send_multipart(encode_frame(frame), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        """Close the socket (unsent frames are discarded)."""
        self._sock.close(0)


class FrameReceiver:
    """A PULL socket bound where every capture connects."""

    def __init__(
        self,
        endpoint: str,
        receive_hwm: int = 16,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, receive_hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise OSError(
                f"cannot listen for cameras on {endpoint!r} ({exc}); set "
                "DEPOTWATCH_AGGREGATOR__BIND to a free tcp://HOST:PORT (port * picks one)"
            ) from None
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    @property
    def endpoint(self) -> str:
        """The bound endpoint, with the real port when ``*`` was asked for."""
        last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def receive(self, timeout_s: float) -> list[bytes] | None:
        """The parts of the next message, or None if none arrived within ``timeout_s``."""
        if not self._poller.poll(int(timeout_s * 1000)):
            return None
        return self._sock.recv_multipart()

    def close(self) -> None:
        """Close the socket."""
        self._sock.close(0)
