"""The root of Vigil's exception tree.

VigilError
 ├── SchemaError          (vigil.schema.errors)   an event or batch breaks the event model
 ├── DetectError          (vigil.detect.errors)   a rule cannot be loaded or compiled
 ├── AgentError           (vigil.agent.errors)    a sensor, the spool or the transport failed
 │    └── NotApplicable                           a plugin cannot run here (not an error to log)
 ├── ResponseError        (vigil.agent.respond.errors)  a response action failed
 ├── TaskRejected         (vigil.agent.errors)    a task failed its signature, expiry or target
 ├── HuntError            (vigil.hunt.errors)     a hunt query was refused or failed
 ├── IntelError           (vigil.intel.errors)    a feed cannot be read or an indicator is bad
 ├── LogSourceError       (vigil.logsources.errors)  a log file cannot be read
 └── ServerError          (vigil.server.errors)   the server refused or failed a request
      └── PlaybookError                           a playbook is not valid
           └── PlaceholderError                   an alert lacks a field a playbook names
"""

from __future__ import annotations


class VigilError(Exception):
    """Base of every error Vigil raises on purpose."""
