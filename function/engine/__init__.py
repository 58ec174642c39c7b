"""The recogniser: decode -> fingerprint -> catalog -> matcher, and `recogniser` as its public face.

Nothing here knows about HTTP, Omi or the storage backends; the webhook and the CLI use it
through `function.engine.recogniser`.
"""
