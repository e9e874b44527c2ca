"""The local OpenAI-compatible server: a front end of the runtime, like the window and `--ask`. No Qt.

`config` says where it listens and who may talk to it, `guard` enforces that before any route runs,
`openai_api` reads requests and writes responses in OpenAI's shapes, `service` turns a request into
a runtime job, `app` wires the routes and `serve` runs it headless (`medgemma-desktop --serve`) or
on a thread for the window.
"""
