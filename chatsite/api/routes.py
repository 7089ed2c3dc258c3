"""The endpoints: every blueprint, in the order the factory registers them."""

from . import (
    chat,
    chats,
    docs,
    generate,
    health,
    metrics,
    model_list,
    openapi,
    resume,
    settings,
    stop,
    update_settings,
)

BLUEPRINTS = [
    module.bp
    for module in (
        settings,
        update_settings,
        chats,
        model_list,
        generate,
        chat,
        stop,
        resume,
        health,
        metrics,
        openapi,
        docs,
    )
]
