"""The simulator's HTTP(S) front: authentication, permission checks,
parameter validation, the JSON envelope, injected faults, the request log,
and a control endpoint (/_sim/...) for tests.

Auth is Proxmox's: `Authorization: PVEAPIToken=USER@REALM!TOKEN=SECRET`, or a
ticket from POST /access/ticket sent as the PVEAuthCookie cookie plus a
CSRFPreventionToken header on writes. Failures are 401 with the reason only
in the status line, an empty body, after a delay (3 s in Proxmox).
"""
import hashlib
import hmac
import json
import random
import re
import secrets
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .api import ROUTES, Api
from .cluster import PVEError
from .schema import ParameterError

API_PREFIX = "/api2/json"


class Principal:
    """A user or an API token and the privileges it holds per ACL path."""

    def __init__(self, id, acl, root=False):
        self.id = id
        self.acl = acl  # [(path, {privs})], propagating to sub-paths
        self.root = root

    @property
    def is_token(self):
        return "!" in self.id

    def privileges(self, path):
        if self.root:
            return None  # everything
        held = set()
        for acl_path, privs in self.acl:
            if acl_path == "/" or path == acl_path or path.startswith(acl_path.rstrip("/") + "/"):
                held |= set(privs)
        return held

    def has(self, path, privs, any_of=False):
        held = self.privileges(path)
        if held is None:
            return True
        return any(p in held for p in privs) if any_of else all(p in held for p in privs)


class Simulator:
    def __init__(self, cluster, schema, tokens, users, auth_failure_delay=3.0, ticket_lifetime=7200):
        self.cluster = cluster
        self.schema = schema
        self.api = Api(cluster, schema)
        self.tokens = tokens  # "user@realm!name" -> (secret, Principal)
        self.users = users  # "user@realm" -> (password, Principal)
        self.auth_failure_delay = auth_failure_delay
        self.ticket_lifetime = ticket_lifetime
        self.ticket_key = secrets.token_bytes(32)
        self.faults = []
        self.log = []
        self.log_lock = threading.Lock()

    # ------------------------------------------------------------ tickets

    def make_ticket(self, userid, issued=None):
        issued = int(issued if issued is not None else time.time())
        body = f"PVE:{userid}:{issued:08X}"
        signature = hmac.new(self.ticket_key, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}::{signature}"

    def verify_ticket(self, ticket):
        """The user a valid, unexpired ticket belongs to, or None."""
        body, _, signature = ticket.partition("::")
        expected = hmac.new(self.ticket_key, body.encode(), hashlib.sha256).hexdigest()
        parts = body.split(":")
        if len(parts) != 3 or not hmac.compare_digest(signature, expected):
            return None
        if time.time() - int(parts[2], 16) > self.ticket_lifetime:
            return None
        return parts[1]

    def csrf_token(self, userid):
        return hmac.new(self.ticket_key, f"csrf:{userid}".encode(), hashlib.sha256).hexdigest()[:32]

    # ------------------------------------------------------------ faults

    def pick_fault(self, method, path):
        for fault in self.faults:
            if fault.get("method") and fault["method"] != method:
                continue
            if not re.search(fault.get("path", ""), path):
                continue
            if fault.get("remaining") == 0:
                continue
            if random.random() >= fault.get("rate", 1.0):
                continue
            if "remaining" in fault:
                fault["remaining"] -= 1
            return fault
        return None

    def record(self, entry):
        with self.log_lock:
            self.log.append(entry)


def check_permission(rule, caller, params):
    """Evaluates a schema `permissions` block for the caller."""
    if rule is None:
        return caller.root and not caller.is_token, "root@pam"
    if rule.get("user") == "world" or rule.get("user") == "all":
        return True, None
    check = rule.get("check")
    if check is None:
        return caller.root and not caller.is_token, "root@pam"
    return _evaluate(check, caller, params)


def _evaluate(check, caller, params):
    kind = check[0]
    if kind == "perm":
        path = re.sub(r"\{(\w+)\}", lambda m: str(params.get(m.group(1), "")), check[1])
        privs = check[2]
        any_of = "any" in check[3:]
        return caller.has(path, privs, any_of), f"{path}, {' | '.join(privs) if any_of else ', '.join(privs)}"
    if kind in ("and", "or"):
        results = [_evaluate(sub, caller, params) for sub in check[1:]]
        ok = all(r[0] for r in results) if kind == "and" else any(r[0] for r in results)
        missing = next((r[1] for r in results if not r[0]), None)
        return ok, missing
    # userid-param, userid-group, perm-modify: only what root may do, here.
    return caller.root, "root@pam"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # pve-http-server (src/PVE/APIServer/AnyEvent.pm, sub response) builds the
    # status line, headers and content into one string and push_writes it once.
    # Unbuffered, http.server writes the headers and the body apart, and the
    # body then waits on the client's delayed ACK: 40 ms on every answer.
    # Buffered, handle_one_request's flush sends each answer in one write.
    wbufsize = 1 << 16
    server_version = "pve-api-daemon/3.0"
    sim: Simulator = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    # ------------------------------------------------------------ plumbing

    def reply(self, status, reason, body=None, headers=None):
        self.replied_status = status
        if getattr(self, "reply_delay", 0):
            time.sleep(self.reply_delay)  # the answer travels slowly: what it says may be stale on arrival
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status, reason)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if body is not None:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def read_params(self, method):
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if method in ("POST", "PUT"):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if raw:
                if (self.headers.get("Content-Type") or "").startswith("application/json"):
                    params.update({k: str(int(v)) if isinstance(v, bool) else str(v)
                                   for k, v in json.loads(raw).items()})
                else:
                    params.update(dict(urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True)))
        # Path parameters are decoded after routing: a volid's '/' arrives as %2F.
        return url.path, params

    def authenticate(self, method):
        """The caller, or a reason for a 401."""
        sim = self.sim
        header = self.headers.get("Authorization") or ""
        if header.startswith("PVEAPIToken="):
            token = header[len("PVEAPIToken="):]
            # The secret is what follows the last '='; the id may not contain one.
            token_id, sep, secret = token.rpartition("=")
            if not sep or token_id not in sim.tokens:
                return None, "invalid token value!" if not sep else "authentication failure"
            expected, principal = sim.tokens[token_id]
            if not hmac.compare_digest(expected, secret):
                return None, "authentication failure"
            return principal, None
        cookie = self.headers.get("Cookie") or ""
        found = re.search(r"PVEAuthCookie=([^;]+)", cookie)
        if not found:
            return None, "No ticket"
        userid = sim.verify_ticket(urllib.parse.unquote(found.group(1)))
        if userid is None or userid not in sim.users:
            return None, "invalid ticket"
        if method != "GET" and self.headers.get("CSRFPreventionToken") != sim.csrf_token(userid):
            return None, "Permission denied - invalid csrf token"
        return sim.users[userid][1], None

    # ------------------------------------------------------------ dispatch

    def dispatch(self, method):
        sim = self.sim
        path, params = self.read_params(method)
        if path.startswith("/_sim/"):
            return self.control(method, path, params)
        started = time.time()
        status, caller, self.replied_status, self.reply_delay = None, None, None, 0
        try:
            status, caller = self.serve(method, path, params)
        finally:
            # Logged even when the client left before the answer (a killed
            # controller): what was done was done.
            shown = {k: ("<redacted>" if k in ("password",) else v) for k, v in params.items()}
            sim.record({"time": started, "method": method, "path": path, "params": shown,
                        "status": status if status is not None else self.replied_status,
                        "user": caller.id if caller else None, "ms": round((time.time() - started) * 1000, 2)})

    def serve(self, method, path, params):
        """Answers one API request; returns (status, caller)."""
        sim = self.sim
        if not path.startswith(API_PREFIX):
            self.reply(404, "Not Found", {"data": None})
            return 404, None
        api_path = path[len(API_PREFIX):] or "/"
        fault = sim.pick_fault(method, api_path)
        extra_task_seconds = 0.0
        if fault:
            time.sleep(fault.get("delay_ms", 0) / 1000)
            extra_task_seconds = fault.get("task_extra_seconds", 0)
            self.reply_delay = fault.get("reply_delay_ms", 0) / 1000
            if fault.get("status") == "timeout":
                time.sleep(fault.get("seconds", 60))
                self.close_connection = True
                return 0, None
            if fault.get("status"):
                message = fault.get("message", {596: "Broken pipe", 595: "Connection refused",
                                                 597: "Connection error"}.get(fault["status"], "injected fault"))
                self.reply(fault["status"], message, {"data": None, "message": message + "\n"})
                return fault["status"], None

        key, path_params = sim.schema.match(method, api_path)
        path_params = {k: urllib.parse.unquote(v) for k, v in (path_params or {}).items()}
        if key == "POST /access/ticket":
            return self.ticket(params), None
        if key is None or key not in ROUTES:
            message = f"Method '{method} {api_path}' not implemented"
            self.reply(501, message, {"data": None, "message": message + "\n"})
            return 501, None

        caller, reason = self.authenticate(method)
        if caller is None:
            time.sleep(sim.auth_failure_delay)
            self.reply(401, reason)
            return 401, None
        if caller.is_token and not sim.schema.allows_token(key):
            self.reply(403, "Permission check failed (API tokens are not allowed)", {"data": None})
            return 403, caller

        try:
            checked = sim.schema.validate(key, {**params, **path_params})
        except ParameterError as error:
            self.reply(400, "Parameter verification failed.",
                       {"data": None, "errors": error.errors, "message": "Parameter verification failed.\n"})
            return 400, caller

        allowed, missing = check_permission(sim.schema.permissions(key), caller, checked)
        if allowed and key == "DELETE /nodes/{node}/storage/{storage}/content/{volume}":
            storage = checked.get("storage") or checked["volume"].split(":", 1)[0]
            allowed, missing = caller.has(f"/storage/{storage}", ["Datastore.Allocate"]), \
                f"/storage/{storage}, Datastore.Allocate"
        if not allowed:
            message = f"Permission check failed ({missing})"
            self.reply(403, message, {"data": None, "message": message + "\n"})
            return 403, caller

        handler_name, needs_lock = ROUTES[key]
        try:
            if needs_lock:
                sim.cluster.wait_for_config_lock(sim.cluster.vm(checked["vmid"]))
            with sim.cluster.lock:
                sim.cluster.advance()
                # A slow task (a 40 s import, say): the task this request starts takes longer.
                sim.cluster.extra_task_seconds = extra_task_seconds
                try:
                    data = getattr(sim.api, handler_name)(checked, caller)
                finally:
                    sim.cluster.extra_task_seconds = 0.0
        except ParameterError as error:
            self.reply(400, "Parameter verification failed.",
                       {"data": None, "errors": error.errors, "message": "Parameter verification failed.\n"})
            return 400, caller
        except PVEError as error:
            reason = error.message.split("\n")[0]
            self.reply(error.status, reason, {"data": None, "message": error.message + "\n"})
            return error.status, caller
        self.reply(200, "OK", {"data": data})
        return 200, caller

    def ticket(self, params):
        sim = self.sim
        username, password = params.get("username", ""), params.get("password", "")
        user = sim.users.get(username)
        valid = user is not None and (hmac.compare_digest(user[0], password)
                                      or sim.verify_ticket(password) == username)
        if not valid:
            time.sleep(sim.auth_failure_delay)
            self.reply(401, "authentication failure")
            return 401
        self.reply(200, "OK", {"data": {"ticket": sim.make_ticket(username), "username": username,
                                        "CSRFPreventionToken": sim.csrf_token(username)}})
        return 200

    # ------------------------------------------------------------ control

    def control(self, method, path, params):
        """Test hooks; never part of the Proxmox API."""
        sim = self.sim
        if path == "/_sim/log" and method == "GET":
            with sim.log_lock:
                return self.reply(200, "OK", {"data": list(sim.log)})
        if path == "/_sim/log" and method == "DELETE":
            with sim.log_lock:
                sim.log.clear()
            return self.reply(200, "OK", {"data": None})
        if path == "/_sim/faults" and method == "GET":
            return self.reply(200, "OK", {"data": sim.faults})  # with what each counted rule has left
        if path == "/_sim/faults" and method == "PUT":
            rules = json.loads(params.get("rules", "[]"))
            for rule in rules:
                if "count" in rule:
                    rule["remaining"] = rule["count"]
            sim.faults = rules
            return self.reply(200, "OK", {"data": None})
        if path == "/_sim/lock" and method == "PUT":
            with sim.cluster.lock:
                vm = sim.cluster.vm(int(params["vmid"]))
                if params.get("lock"):
                    vm.config["lock"] = params["lock"]
                else:
                    vm.config.pop("lock", None)
            return self.reply(200, "OK", {"data": None})
        if path == "/_sim/vm-status" and method == "PUT":
            with sim.cluster.lock:
                sim.cluster.vm(int(params["vmid"])).status = params["status"]
            return self.reply(200, "OK", {"data": None})
        if path == "/_sim/hotplug-faults" and method == "PUT":
            # Failing hot-plugs: [{"vmid"?, "action": "plug"|"unplug", "count"?, "rate"?, "message"?}]
            rules = json.loads(params.get("rules", "[]"))
            for rule in rules:
                if "count" in rule:
                    rule["remaining"] = rule["count"]
            with sim.cluster.lock:
                sim.cluster.hotplug_faults = rules
            return self.reply(200, "OK", {"data": None})
        if path == "/_sim/task-seconds" and method == "PUT":
            # Changes task durations while running, e.g. {"import-per-gib": 40}.
            with sim.cluster.lock:
                sim.cluster.task_seconds.update({k: float(v) for k, v in params.items()})
            return self.reply(200, "OK", {"data": None})
        if path == "/_sim/name-round" and method == "PUT":
            # pvestatd's round in seconds (0: resources name VMs as their configs do); a round starts now.
            with sim.cluster.lock:
                sim.cluster.name_round_seconds = float(params["seconds"])
                sim.cluster.last_name_round = 0.0
            return self.reply(200, "OK", {"data": None})
        if path == "/_sim/vm-config" and method == "PUT":
            # Sets a key of a VM's current config as an administrator would (e.g. `hotplug`).
            with sim.cluster.lock:
                vm = sim.cluster.vm(int(params["vmid"]))
                if params.get("value", "") == "":
                    vm.config.pop(params["key"], None)
                else:
                    vm.config[params["key"]] = params["value"]
            return self.reply(200, "OK", {"data": None})
        if path == "/_sim/migrate" and method == "PUT":
            with sim.cluster.lock:
                sim.cluster.migrate(int(params["vmid"]), params["target"])
            return self.reply(200, "OK", {"data": None})
        if path == "/_sim/holders" and method == "GET":
            # The VMs whose drives hold a volume, in the current config or pending.
            with sim.cluster.lock:
                sim.cluster.advance()
                return self.reply(200, "OK", {"data": sim.cluster.drive_holders(params["volid"])})
        if path == "/_sim/state" and method == "GET":
            with sim.cluster.lock:
                sim.cluster.advance()
                return self.reply(200, "OK", {"data": snapshot_state(sim.cluster)})
        self.reply(404, "Not Found", {"data": None})


def snapshot_state(cluster):
    return {
        "storages": {(s.id if s.node is None else f"{s.id}@{s.node}"):
                     {"type": s.type, "total": s.total, "used": s.used, "node": s.node,
                      "volumes": {v.volid: {"size": v.size, "vmid": v.vmid, "format": v.format,
                                            "snapshots": sorted(v.snapshots)}
                                  for v in s.volumes.values()}}
                     for s in cluster.storages.values()},
        "vms": {str(vm.vmid): {"node": vm.node, "status": vm.status, "config": dict(vm.config),
                               "pending": dict(vm.pending), "pending_delete": sorted(vm.pending_delete),
                               "snapshots": sorted(vm.snapshots)} for vm in cluster.vms.values()},
        "double_attachments": list(cluster.double_attachments),
        "shared_references": list(cluster.shared_references),
        "unsafe_snapshots": list(cluster.unsafe_snapshots),
        "in_place_swaps": list(cluster.in_place_swaps),
        "tasks": {"running": sum(t.status == "running" for t in cluster.tasks.values()),
                  "total": len(cluster.tasks)},
    }


class Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections under load (the
    # client then waits a second for SYN retransmission); a real server listens deeper.
    request_queue_size = 256


def serve(simulator, host, port, certfile=None, keyfile=None):
    """Starts the server; returns it (serve_forever runs on a thread)."""
    handler = type("BoundHandler", (Handler,), {"sim": simulator})
    server = Server((host, port), handler)
    server.daemon_threads = True
    if certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server
