"""The run store: run ids, one JSON per run written atomically, claims, code versions. Imports only the engine."""
