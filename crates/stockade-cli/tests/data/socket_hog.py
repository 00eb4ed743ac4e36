import socket, sys, time
target = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1024)
port = srv.getsockname()[1]
conns = []; sent = 0; chunk = b"x" * (1 << 20)
try:
    while sent < target and len(conns) < 900:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)
        c.connect(("127.0.0.1", port))
        s, _ = srv.accept()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        conns.append((c, s))
        c.setblocking(False)
        stuck = 0
        while sent < target:
            try:
                n = c.send(chunk)
                sent += n
            except BlockingIOError:
                break
            except OSError:
                break
        print(sent, file=sys.stderr)
except OSError as e:
    print("stopped:", e, file=sys.stderr)
print("SENT", sent, flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 3)
