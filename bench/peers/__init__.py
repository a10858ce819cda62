"""Peers: tools a team would pick instead of the reconciler, measured beside it on the
same topic and cache (`python -m bench throughput --peer NAME`). Each is off by
default: it needs downloads the default run does not.

- `camel` (`bench.peers.camel`): Apache Camel 4.17.0, a YAML route run by camel-main.
"""
