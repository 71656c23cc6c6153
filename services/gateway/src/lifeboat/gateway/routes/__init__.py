"""The REST API, one router per resource; `lifeboat.gateway.app.build_app` wires them."""
