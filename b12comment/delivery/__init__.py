"""Delivery downstream, shared by serve and `replay --forward` (which never
import each other): `transports` sends one message or a batch and says how it
went; `forwarder` empties a journal's queue through a transport, in order,
with retries, backoff and dead letters."""
