//! The sandbox (§2.1): which globals exist, read-only shared library tables, per-process `_ENV`.

use mlua::{Lua, Table};

/// A read-only proxy over `t`: reads pass through, writes raise, `pairs` iterates the original.
pub fn read_only(lua: &Lua, t: Table) -> mlua::Result<Table> {
    let proxy = lua.create_table()?;
    let mt = lua.create_table()?;
    mt.set("__index", t.clone())?;
    mt.set(
        "__newindex",
        lua.create_function(|_, _: mlua::MultiValue| -> mlua::Result<()> {
            Err(mlua::Error::runtime("attempt to modify a read-only table"))
        })?,
    )?;
    let original = t.clone();
    mt.set(
        "__pairs",
        lua.create_function(move |lua, _: mlua::Value| {
            let next: mlua::Function = lua.globals().raw_get("next")?;
            Ok((next, original.clone(), mlua::Value::Nil))
        })?,
    )?;
    mt.set(
        "__len",
        lua.create_function(move |_, _: mlua::Value| Ok(t.raw_len()))?,
    )?;
    mt.set("__metatable", false)?;
    mt.set("__readonly", true)?;
    proxy.set_metatable(Some(mt))?;
    Ok(proxy)
}

/// `rawset` that refuses the shared read-only tables.
pub fn guarded_rawset(lua: &Lua) -> mlua::Result<mlua::Function> {
    lua.create_function(|_, (t, k, v): (Table, mlua::Value, mlua::Value)| {
        if let Some(mt) = t.metatable() {
            if mt.raw_get::<bool>("__readonly").unwrap_or(false) {
                return Err(mlua::Error::runtime("attempt to modify a read-only table"));
            }
        }
        t.raw_set(k, v)?;
        Ok(t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_tables_refuse_writes_but_iterate() {
        let lua = Lua::new();
        let t = lua.create_table().unwrap();
        t.set("a", 1).unwrap();
        lua.globals()
            .set("ro", read_only(&lua, t).unwrap())
            .unwrap();
        lua.globals()
            .set("rawset", guarded_rawset(&lua).unwrap())
            .unwrap();
        assert!(lua.load("ro.b = 2").exec().is_err());
        assert!(lua.load("rawset(ro, 'b', 2)").exec().is_err());
        let n: i64 = lua
            .load("local n = 0 for k, v in pairs(ro) do n = n + v end return n")
            .eval()
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(lua.load("return ro.a").eval::<i64>().unwrap(), 1);
    }
}
