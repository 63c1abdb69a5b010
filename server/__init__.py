"""Transport: the aiohttp app, HTTP routes, Socket.IO events, CLI."""
