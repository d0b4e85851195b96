"""The feedback store: completions, ratings, comparisons, examples, jobs and the adapter registry.

Imports only `ratchet.settings`; every other package reads and writes through here.
"""
