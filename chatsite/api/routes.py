"""The endpoints: every blueprint, in the order the factory registers them."""

from . import (
    chat,
    create_chat,
    docs,
    generate,
    get_chat,
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
        create_chat,
        get_chat,
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
