"""Package defaults; `instance/config.py` and `CHATSITE_*` variables override them."""

# Sign-in (JWT issued by the site's login service).
JWT_SECRET = None
JWT_ALGORITHMS = ["HS256"]
JWT_PUBLIC_KEY = None
JWT_JWKS_URL = None
JWT_AUDIENCE = None
JWT_ISSUER = None
JWT_LEEWAY = 10  # seconds of clock skew tolerated on exp/nbf/iat

# Storage. None means "in the instance folder" and is resolved by the factory.
DATABASE_URL = None
CHAT_DIR = None
CHAT_STORE = "files"
# Saves the database could not take yet, kept on this host until they are written.
JOURNAL_DIR = None
AUTO_CREATE_USERS = True

# Limits.
MAX_CONTENT_LENGTH = 1024 * 1024
MAX_SYSTEM_PROMPT_CHARS = 8000
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 100_000
MAX_PROMPT_CHARS = 200_000
MAX_CHATS_PER_USER = 10_000
MAX_STORAGE_PER_USER = 256 * 1024 * 1024  # bytes of chat transcripts per user
SETTINGS_CHAT_FILES = 100  # chats /settings lists (the newest); /list-chats pages through all

# Model options: sampling settings only (chatsite/api/options.py); every answer is bounded.
MAX_NUM_PREDICT = 4096  # num_predict's upper bound, and what is sent when a client gives none
ALLOWED_OPTIONS = None  # more options: {"name": [min, max] or None for any value}

# Chat instances (the upstream LLM servers).
CHAT_INSTANCES = ["http://127.0.0.1:11434"]
INSTANCE_WAIT_TIMEOUT = 10.0
MAX_QUEUE = 100  # requests waiting for one model; past it a 503
QUEUE_RETRY_AFTER = 10  # seconds, in the 503's Retry-After
STOP_TIMEOUT = 10.0  # seconds /stop waits for the request to end
INSTANCE_COOLDOWN = 5.0
UPSTREAM_CONNECT_TIMEOUT = 3.0
UPSTREAM_READ_TIMEOUT = 120.0
UPSTREAM_MAX_SECONDS = 900.0
UPSTREAM_MAX_LINE_BYTES = 1024 * 1024
MODELS_CACHE_SECONDS = 10.0

# Chat titles: None keeps the name taken from the first user message; a model name has that
# model write a short title after a chat's first answer, in the background, through the
# same line as everyone (dropped if no slot frees within TITLE_WAIT seconds).
TITLE_MODEL = None
TITLE_WAIT = 3.0

# Tools the server runs for the model.
TOOLS = None  # None: the built-in set
MAX_TOOL_ROUNDS = 5
MAX_TOOL_CALLS_PER_ROUND = 8  # calls past this in one answer are refused, not run
TOOL_TIMEOUT = 5.0  # seconds a tool may run before its process is killed
TOOL_PROCESSES = 2  # tool processes per worker; a call waits up to TOOL_TIMEOUT for one

# Who may use what right now (user locks, instance slots): "files" spans the workers of
# one host; REDIS_URL spans hosts; "local" is one process only.
COORDINATION = "files"
REDIS_URL = None
REDIS_PREFIX = "chatsite"
LEASE_TTL = 15.0
LOCK_DIR = None
USER_LOCK_RETRY_AFTER = 2

# Answers that outlive their client (a /chat with a chatfile): an answer nobody reads for
# DETACHED_MAX_SECONDS is stopped (saved incomplete); /resume finds an answer until
# RESUME_KEEP_SECONDS after its end, with at most RESUME_KEEP_LINES of its latest lines.
DETACHED_MAX_SECONDS = 300.0
RESUME_KEEP_SECONDS = 60.0
RESUME_KEEP_LINES = 10_000

# Reverse proxies in front of the app whose X-Forwarded-* headers are trusted (nginx: 1),
# and the peer addresses they connect from: a request from any other peer keeps its own.
PROXY_HOPS = 0
FORWARDED_ALLOW_IPS = ["127.0.0.1", "::1"]

# Logs: "plain" lines, or "json" (one object per line, and one line per request with its
# id, user, endpoint, status, duration, model, instance, queue wait and tokens).
LOG_FORMAT = "plain"

# Cross-origin front-end dev servers.
CORS_ORIGINS = []
