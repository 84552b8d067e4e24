#!/usr/bin/env python3
"""A bridge from the Microsoft TPM simulator's TCP protocol to swtpm's raw TPM socket.

The official Node TPM client (azure-iot-security-tpm over tss.js) talks to a TPM simulator
with the Microsoft simulator's protocol: a TPM port (commands framed as
SEND_COMMAND u32, locality u8, size u32, bytes; answered size u32, bytes, u32 0) and a
platform port (power and NV signals, one u32 each). swtpm speaks raw TPM 2.0 commands on its
server socket. This bridge listens on PORT (TPM) and PORT + 1 (platform) on loopback and
relays each command to swtpm on SWTPM_PORT, one swtpm connection per client connection;
platform signals are acknowledged (swtpm runs powered on, started with startup-clear).

Usage: tpm-bridge.py PORT SWTPM_PORT. Prints "ready" once both ports listen. Each command and
response is bounded by the TPM's 4 KiB buffer; anything else closes that connection.
"""

import socket
import struct
import sys
import threading

SEND_COMMAND = 8
HANDSHAKE = 15
MAX_TPM_MESSAGE = 4096


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def u32(sock):
    return struct.unpack(">I", recv_exact(sock, 4))[0]


def tpm_connection(client, swtpm_port):
    tpm = socket.create_connection(("127.0.0.1", swtpm_port))
    try:
        while True:
            command = u32(client)
            if command == HANDSHAKE:
                u32(client)  # client version
                client.sendall(struct.pack(">III", 1, 0, 0))
            elif command == SEND_COMMAND:
                recv_exact(client, 1)  # locality
                size = u32(client)
                if size > MAX_TPM_MESSAGE:
                    raise EOFError
                tpm.sendall(recv_exact(client, size))
                header = recv_exact(tpm, 10)
                total = struct.unpack(">I", header[2:6])[0]
                if not 10 <= total <= MAX_TPM_MESSAGE:
                    raise EOFError
                response = header + recv_exact(tpm, total - 10)
                client.sendall(struct.pack(">I", len(response)) + response + struct.pack(">I", 0))
            else:
                client.sendall(struct.pack(">I", 0))
    except (EOFError, OSError):
        pass
    finally:
        tpm.close()
        client.close()


def platform_connection(client):
    try:
        while True:
            u32(client)
            client.sendall(struct.pack(">I", 0))
    except (EOFError, OSError):
        client.close()


def listen(port):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    return server


def serve(server, handler, *args):
    while True:
        client, _ = server.accept()
        threading.Thread(target=handler, args=(client, *args), daemon=True).start()


def main():
    port, swtpm_port = int(sys.argv[1]), int(sys.argv[2])
    tpm_server, platform_server = listen(port), listen(port + 1)
    threading.Thread(target=serve, args=(platform_server, platform_connection), daemon=True).start()
    print("ready", flush=True)
    serve(tpm_server, tpm_connection, swtpm_port)


if __name__ == "__main__":
    main()
