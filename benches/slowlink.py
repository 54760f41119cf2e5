#!/usr/bin/env python3
"""A slow network link in user space: a TCP proxy that delays and rate-limits each direction.

Used by the slow-link benchmarks (benches/README.md, "Slow hospital link") and by the uploader's
cut-link runs. The kernel's netem qdisc is not available on these machines (tbf is, but it has no
delay), so the link is emulated here:

- every byte is paced by a token bucket of --rate-kbit per direction (a serial link: one
  direction's bytes queue behind each other, the two directions are independent, like a
  full-duplex line);
- every chunk is delivered --delay-ms after it left the sender's side of the bucket (one-way
  delay; the round trip is twice that), without holding up the chunks behind it;
- with --cut-after-bytes N, the proxy closes both sides of every connection that has carried N
  bytes upstream (client to server) in total since the proxy started, once; later connections
  pass (a link that drops once and comes back).

    python3 benches/slowlink.py --listen 18042 --to 127.0.0.1:8042 --rate-kbit 2000 --delay-ms 75

It prints one line per connection closed on stderr (bytes each way) with --verbose.
"""

import argparse
import asyncio
import sys
import time


class Bucket:
    """Paces bytes at `rate` bytes/s; `reserve(n)` returns when the n bytes have left the line."""

    def __init__(self, rate_bytes: float):
        self.rate = rate_bytes
        self.free_at = 0.0

    def reserve(self, n: int) -> float:
        now = time.monotonic()
        start = max(now, self.free_at)
        self.free_at = start + n / self.rate
        return self.free_at


class Link:
    def __init__(self, args):
        self.args = args
        self.rate = args.rate_kbit * 1000 / 8
        self.delay = args.delay_ms / 1000
        self.upstream_bytes = 0
        self.cut_done = args.cut_after_bytes is None
        self.connections = set()
        # One line per direction, shared by all connections: a link is a link, not a per-socket
        # allowance (a browser's six connections share the hospital's 2 Mbit/s).
        self.up = Bucket(self.rate)
        self.down = Bucket(self.rate)

    async def pipe(self, reader, writer, bucket, upstream, peer_writer):
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                item = await queue.get()
                if item is None:
                    break
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass

        deliverer = asyncio.create_task(deliver())
        total = 0
        try:
            while True:
                # Small reads keep the pacing fine-grained (16 KiB is 65 ms at 2 Mbit/s).
                data = await reader.read(16 * 1024)
                if not data:
                    break
                if upstream and not self.cut_done:
                    room = self.args.cut_after_bytes - self.upstream_bytes
                    if len(data) >= room:
                        self.cut_done = True
                        self.upstream_bytes += room
                        if self.args.verbose:
                            print(f"slowlink: cutting the link after {self.upstream_bytes} bytes upstream",
                                  file=sys.stderr)
                        for conn in list(self.connections):
                            for w in conn:
                                w.transport.abort()
                        break
                if upstream:
                    self.upstream_bytes += len(data)
                total += len(data)
                left = bucket.reserve(len(data))
                # The sender's socket buffer is small on a slow line: wait until the bytes have
                # (nearly) left before reading more, so the pacing back-pressures the sender.
                await asyncio.sleep(max(0.0, left - time.monotonic() - 0.05))
                queue.put_nowait((left + self.delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            try:
                await deliverer
            except (ConnectionError, OSError):
                pass
        return total

    async def handle(self, client_reader, client_writer):
        host, port = self.args.to.rsplit(":", 1)
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.transport.abort()
            return
        conn = (client_writer, server_writer)
        self.connections.add(conn)
        # The TCP handshake crosses the link too: one round trip before the first byte.
        await asyncio.sleep(2 * self.delay)
        up, down = await asyncio.gather(
            self.pipe(client_reader, server_writer, self.up, True, client_writer),
            self.pipe(server_reader, client_writer, self.down, False, server_writer),
        )
        self.connections.discard(conn)
        for w in conn:
            try:
                w.close()
            except (OSError, RuntimeError):
                pass
        if self.args.verbose:
            print(f"slowlink: connection closed, {up} bytes up, {down} bytes down", file=sys.stderr)


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--to", required=True, help="HOST:PORT of the server behind the link")
    parser.add_argument("--rate-kbit", type=float, default=2000, help="line rate per direction (kbit/s)")
    parser.add_argument("--delay-ms", type=float, default=75, help="one-way delay (ms); RTT is twice this")
    parser.add_argument("--cut-after-bytes", type=int, help="drop every open connection once, after N bytes upstream")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    link = Link(args)
    server = await asyncio.start_server(link.handle, "127.0.0.1", args.listen)
    print(f"slowlink: 127.0.0.1:{args.listen} -> {args.to}, {args.rate_kbit:g} kbit/s, "
          f"{2 * args.delay_ms:g} ms RTT", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
