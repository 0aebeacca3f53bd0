# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of keelson.stack.apt_packages: dpkg-query first, ansible.builtin.apt only for what is missing."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

from ansible_collections.keelson.stack.plugins.module_utils.apt_packages import missing_packages, query_argv

ARGUMENT_SPEC = dict(
    name=dict(type="list", elements="str", required=True),
    install_recommends=dict(type="bool"),
    cache_valid_time=dict(type="int", default=3600),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        names = args["name"]
        try:
            # dpkg-query exits 1 when it knows none of a name: those count as missing
            query = self._read(task_vars, "ansible.builtin.command", {"argv": query_argv(names)})
            missing = missing_packages(query.get("stdout", ""), names) if query.get("rc") in (0, 1) else list(names)
            if not missing:
                result.update(changed=False, missing=[], msg="%d packages installed" % len(names))
                return result

            # A freshly built image has no lists, and its empty lists can look recent to cache_valid_time.
            lists = self._read(task_vars, "ansible.builtin.find", {"paths": "/var/lib/apt/lists", "patterns": "*_Packages*"})
            if lists.get("matched", 0) == 0:
                refresh = self._read(task_vars, "ansible.builtin.apt", {"update_cache": True})
                if refresh.get("failed"):
                    result.update(refresh, changed=False, missing=missing)
                    return result

            apt_args = {"name": names, "state": "present", "update_cache": True,
                        "cache_valid_time": args["cache_valid_time"]}
            if args["install_recommends"] is not None:
                apt_args["install_recommends"] = args["install_recommends"]
            result.update(self._execute_module(module_name="ansible.builtin.apt", module_args=apt_args,
                                               task_vars=task_vars))
            result["missing"] = missing
            return result
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)

    def _read(self, task_vars, module_name, module_args):
        """Runs a module that changes no configuration also in check mode (apt needs the lists to plan)."""
        check_mode = self._task.check_mode
        self._task.check_mode = False
        try:
            return self._execute_module(module_name=module_name, module_args=module_args, task_vars=task_vars)
        finally:
            self._task.check_mode = check_mode
