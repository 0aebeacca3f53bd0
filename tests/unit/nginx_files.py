"""The nginx role's upstream files as its template renders them, for the unit tests of the
parsers that read them (module_utils/nginx_upstream.py and files/keelson_upstreams.lua)."""
from pathlib import Path

import jinja2
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "nginx"


def render_upstream(servers, live=None, **item):
    """upstreams/api.conf for an nginx_upstreams entry ``{name: api, servers, **item}``, with
    ``live`` ({HOST:PORT: {state, weight}}) as the state the converge read from the file
    already there; Ansible's template settings (trim_blocks) and the role's defaults."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLE / "templates")), trim_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return env.get_template("upstream_servers.conf.j2").render(
        dict(defaults, item=dict(name="api", servers=servers, **item), nginx_cfg_live_servers={"api": live or {}}))
