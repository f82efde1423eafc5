"""The tasks shipped with lch, one module each; `harness.task` discovers them (this package holds no framework).

Add a task: a module here with a frozen dataclass of parameters and a `Task` subclass decorated
`@register_task("name")` (both from `harness.task`); it appears in `lch tasks` with nothing else touched.
"""
