"""GStreamer RTSP server for simulated cameras; runs under the SYSTEM python (/usr/bin/python3).

``gi`` (PyGObject with GstRtspServer) exists only in the Debian system python, not in the
project venv, so ``depotwatch sim serve`` starts this file as a child process and writes raw
BGR frames into one pipe per camera. Each camera is served at ``rtsp://HOST:PORT/<id>`` as
H.264 (x264enc, zero latency) through ``appsrc``. A camera whose spec ends in ``:h264`` is fed
pre-encoded H.264 instead (Annex B access units, each preceded by its length as 4 big-endian
bytes): it is only packetised, nothing is encoded while serving.

Standard library + gi only: this file must not import anything from the project.

Usage (done for you by ``depotwatch sim serve``)::

    /usr/bin/python3 rtsp_server.py --host 127.0.0.1 --port 8554 \
        --camera cam-s1:1280:720:2/1:FD ...

A camera spec is ``ID:WIDTH:HEIGHT:FPS_NUM/FPS_DEN:READ_FD[:h264]``. The server prints
``READY PORT`` on stdout once it listens (``--port 0`` picks a free one), and exits when any
pipe reaches end of file (the parent is gone) and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def _parse_camera(spec: str) -> tuple[str, int, int, str, int, bool]:
    try:
        parts = spec.split(":")
        encoded = len(parts) == 6 and parts[5] == "h264"
        if encoded:
            parts = parts[:5]
        cam_id, width, height, fps, fd = parts
        return cam_id, int(width), int(height), fps, int(fd), encoded
    except ValueError:
        raise SystemExit(
            f"bad --camera {spec!r}; write ID:WIDTH:HEIGHT:NUM/DEN:FD[:h264], "
            "e.g. cam-s1:1280:720:2/1:5"
        ) from None


def _read_exactly(stream: object, size: int) -> bytes | None:
    """``size`` bytes from a pipe, or None at end of file."""
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))  # type: ignore[attr-defined]
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def main() -> int:
    """Serve until a pipe closes or a signal arrives."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--camera", action="append", default=[], type=_parse_camera)
    parser.add_argument("--bitrate-kbps", type=int, default=2000)
    args = parser.parse_args()
    if not args.camera:
        raise SystemExit("no --camera given; nothing to serve")

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    loop = GLib.MainLoop()
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    stopping = threading.Event()

    def stop(*_: object) -> None:
        if not stopping.is_set():
            stopping.set()
            GLib.idle_add(loop.quit)

    for cam_id, width, height, fps, fd, encoded in args.camera:
        num = int(fps.split("/")[0])
        den = int(fps.split("/")[1])
        gop = max(1, round(2 * num / den))  # a keyframe every ~2 s: new clients start fast
        # Pre-encoded: access units as they come (a dropped one would corrupt the picture up
        # to the next keyframe, so nothing leaks here). Each keyframe unit already starts with
        # its SPS/PPS, so the payloader adds none (config-interval=0): with -1 it put them
        # before every IDR slice, and a client took each slice of a picture coded as several
        # for a picture of its own (half of every picture frozen until the next keyframe).
        launch = (
            (
                f"( appsrc name=src is-live=true format=time do-timestamp=true block=false "
                f"max-bytes={8 << 20} "
                f"caps=video/x-h264,stream-format=byte-stream,alignment=au,"
                f"width={width},height={height},framerate={fps} "
                f"! rtph264pay name=pay0 pt=96 config-interval=0 )"
            )
            if encoded
            else (
                f"( appsrc name=src is-live=true format=time do-timestamp=true block=false "
                f"max-bytes={width * height * 3 * 4} leaky-type=downstream "
                f"caps=video/x-raw,format=BGR,width={width},height={height},framerate={fps} "
                f"! queue max-size-buffers=4 leaky=downstream ! videoconvert "
                f"! video/x-raw,format=I420 "
                f"! x264enc tune=zerolatency speed-preset=ultrafast bitrate={args.bitrate_kbps} "
                f"key-int-max={gop} "
                f"! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
            )
        )
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(True)
        sources: list[object] = []
        lock = threading.Lock()

        def configured(
            _factory: object, media: object, sources: list[object] = sources, lock=lock
        ) -> None:
            src = media.get_element().get_by_name_recurse_up("src")  # type: ignore[attr-defined]
            with lock:
                sources.append(src)

            def unprepared(_media: object, src: object = src) -> None:
                with lock:
                    if src in sources:
                        sources.remove(src)

            media.connect("unprepared", unprepared)  # type: ignore[attr-defined]

        factory.connect("media-configure", configured)
        mounts.add_factory(f"/{cam_id}", factory)

        def pump(
            fd: int = fd,
            size: int = width * height * 3,
            encoded: bool = encoded,
            sources=sources,
            lock=lock,
        ) -> None:
            stream = os.fdopen(fd, "rb", buffering=0)
            while not stopping.is_set():
                if encoded:
                    head = _read_exactly(stream, 4)
                    data = _read_exactly(stream, int.from_bytes(head, "big")) if head else None
                else:
                    data = _read_exactly(stream, size)
                if data is None:
                    stop()  # the parent closed the pipe: it is gone or shutting down
                    return
                with lock:
                    targets = list(sources)
                for src in targets:  # nobody watching: the frame is dropped, the pipe drained
                    src.emit("push-buffer", Gst.Buffer.new_wrapped(data))

        threading.Thread(target=pump, name=f"pump-{cam_id}", daemon=True).start()

    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}; pick a free --port", file=sys.stderr)
        return 2

    # GLib's own signal sources: Python handlers would not run while the C main loop blocks.
    def on_signal(*_: object) -> bool:
        stop()
        return False  # remove the source: one signal is enough

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, on_signal)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
