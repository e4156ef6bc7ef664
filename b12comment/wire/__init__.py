"""The wire: what serve, replay and send share about HL7 on the wire.

- `mllp`: the MLLP codec (bytes in, events out, no I/O).
- `ack`: building the ACK for a received message, and reading a downstream's.
- `waiter`: a sans-I/O ACK waiter (is this answer the one for my message?).
- `split`: cutting files and byte streams into messages, keeping the rest.
- `tls`: TLS contexts for the listener, the forwarder and send.

serve, replay and send import from here and never from each other.
"""
