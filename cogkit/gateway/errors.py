"""The one exception the gateway's handlers turn into an application/problem+json answer."""


class GatewayError(Exception):
    """An error answered to the caller as problem+json."""

    def __init__(self, status: int, title: str, detail: str):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
