"""chatd's benchmark harness: `python -m bench SCENARIO`.

Each scenario starts its own server process (or targets --url), drives it over loopback and
reports server CPU per operation read from /proc, which is steadier than wall-clock rates
on a shared machine.
"""
