"""Use cases: accounts, conversations and groups, messaging.

Services take their collaborators in their constructors (see `context.build_services`).
Functions that never block are plain functions; async ones wait on password hashing or on
a group-commit batch becoming durable. Every operation on a conversation goes through its
owner shard and every operation on a user's records through the user's home shard; the
`Router` says which shard that is.
"""
