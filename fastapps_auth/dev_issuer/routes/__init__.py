"""The dev issuer's HTTP endpoints, one module per job; ``fastapps_auth.dev_issuer.app`` assembles them."""
