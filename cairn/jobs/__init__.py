"""Job machinery shared by the trainer and quantizer services.

A job is a spec (a JSON-able dict, typically a service's proto message as a
dict) plus the work that executes it (an entry point "module:function" taking
a `JobContext`). The store persists jobs and their progress, the manager
queues, dispatches, watches and recovers them, and runners execute the entry
point in a child process, on Ray, or as a Kubernetes Job.
"""
