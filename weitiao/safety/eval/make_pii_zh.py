"""Write the held-out Chinese PII evaluation set, weitiao/safety/eval/pii_zh.jsonl (schema: `pii_eval`).

    python -m weitiao.safety.eval.make_pii_zh        # rewrites the file; a test keeps it in sync

Held out: the recognizers were tuned on the development set in tests/test_pii.py (seed 20261124, its own
templates and hand-written rows). This set uses another seed and templates, value pools and hand-written
rows written separately; it checksums with its own code, not the library's. Rows: sentences with 1–2
PII values in many writings (grouped, +86, full-width, spoken 一三八/幺, lower-case x) and hard
negatives: order and tracking numbers, amounts, prices, dates, timestamps, product codes, stock codes,
hotlines, failed checksums, brand names and place-name phrases that look like people.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

OUT = Path(__file__).parent / "pii_zh.jsonl"
SEED = 77003
W = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
PROVINCE_CODES = [11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50]
PROVINCE_CODES += [51, 52, 53, 54, 61, 62, 63, 64, 65]
MOBILE_PREFIXES = "130 131 132 133 134 135 136 137 138 139 145 147 150 151 152 153 155 156 157 158 159 166 "
MOBILE_PREFIXES += "173 175 176 177 178 180 181 182 183 184 185 186 187 188 189 191 193 195 196 198 199"
SPOKEN = {"0": "零", "1": "一", "2": "二", "3": "三", "4": "四", "5": "五", "6": "六", "7": "七", "8": "八", "9": "九"}
SURNAMES = list("赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦许何吕施孔曹严华金魏陶姜谢邹喻柏窦章苏潘葛范彭鲁韦马苗方俞任袁柳")
SURNAMES += ["欧阳", "司马", "诸葛", "上官"]
GIVEN = list("思远雅婷宏伟晓峰丽娟文博佳怡俊杰梦琪子豪欣妍浩宇诗涵建华秀英永强桂兰志刚海燕")
PLACES = [  # province (or municipality) + city + district, all real
    ("", "北京市", "东城区"),
    ("", "上海市", "静安区"),
    ("", "重庆市", "江北区"),
    ("", "天津市", "南开区"),
    ("河南省", "洛阳市", "涧西区"),
    ("湖南省", "株洲市", "天元区"),
    ("江苏省", "无锡市", "梁溪区"),
    ("浙江省", "宁波市", "鄞州区"),
    ("广东省", "佛山市", "顺德区"),
    ("福建省", "泉州市", "丰泽区"),
    ("山东省", "烟台市", "芝罘区"),
    ("四川省", "绵阳市", "涪城区"),
    ("辽宁省", "大连市", "中山区"),
    ("吉林省", "长春市", "朝阳区"),
    ("广西壮族自治区", "南宁市", "青秀区"),
    ("贵州省", "贵阳市", "云岩区"),
]
ROADS = ["建设大道", "新华街", "和平东路", "学院路", "滨河西路", "工业大道", "青年巷", "光明街", "望江路", "世纪大道"]


def _check(body: str) -> str:
    return "10X98765432"[sum(int(c) * w for c, w in zip(body, W)) % 11]


def _luhn(body: str) -> str:
    """The digit that makes body + digit pass Luhn."""
    for d in "0123456789":
        s = body + d
        total = sum(
            (int(c) * 2 - 9 if int(c) * 2 > 9 else int(c) * 2) if i % 2 else int(c) for i, c in enumerate(s[::-1])
        )
        if total % 10 == 0:
            return d
    raise AssertionError


def _d(r: random.Random, n: int) -> str:
    return "".join(str(r.randrange(10)) for _ in range(n))


def _group(r: random.Random, digits: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for k in sizes:
        out.append(digits[i : i + k])
        i += k
    return sep.join(out + ([digits[i:]] if digits[i:] else []))


def _wide(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in s)


def mobile(r: random.Random) -> str:
    d = r.choice(MOBILE_PREFIXES.split()) + _d(r, 8)
    k = r.randrange(10)
    if k < 3:
        return d
    if k == 3:
        return _group(r, d, [3, 4], " ")
    if k == 4:
        return _group(r, d, [4, 3], "-")
    if k == 5:
        return _group(r, d, [3, 3, 3], " ")
    if k == 6:
        return r.choice(["+86 ", "+86", "0086-"]) + d
    if k == 7:
        return _wide(d)
    if k == 8:
        return "".join(SPOKEN[c] for c in d).replace("一", r.choice("一幺"), 1)
    return _group(r, d, [3, 4], r.choice([" - ", "-"]))


def id_card(r: random.Random) -> str:
    y, m, dd = r.randrange(1935, 2020), r.randrange(1, 13), r.randrange(1, 29)
    body = f"{r.choice(PROVINCE_CODES)}{r.randrange(101, 9999):04d}{y}{m:02d}{dd:02d}{_d(r, 3)}"
    v = body + _check(body)
    k = r.randrange(8)
    if k == 0:
        return _group(r, v, [6, 8], " ")
    if k == 1 and v.endswith("X"):
        return v[:-1] + "x"
    if k == 2:
        return _wide(v)
    return v


def bank_card(r: random.Random) -> str:
    prefix, n = r.choice([("622848", 19), ("621226", 19), ("622588", 16), ("625807", 16), ("4563", 16), ("5310", 16)])
    body = prefix + _d(r, n - len(prefix) - 1)
    v = body + _luhn(body)
    k = r.randrange(6)
    if k == 0:
        return _group(r, v, [4, 4, 4, 4], " ")
    if k == 1:
        return _group(r, v, [4, 4, 4, 4], "-")
    if k == 2:
        return _group(r, v, [6, 6], " ")
    return v


def email(r: random.Random) -> str:
    user = r.choice(["wang.lei", "sunny_li", "chenxi", "zy.zhou", "admin", "kefu", "mike.liu", "yuki-2019"]) + _d(r, 2)
    return user + "@" + r.choice(["163.com", "126.com", "foxmail.com", "outlook.com", "zju.edu.cn", "huawei.com"])


def ip(r: random.Random) -> str:
    if r.random() < 0.75:
        return (
            r.choice(["58", "114", "183", "172", "10", "192"])
            + "."
            + ".".join(str(r.randrange(0, 256)) for _ in range(3))
        )
    return f"240e:{r.randrange(4096):x}:{r.randrange(65536):x}::{r.randrange(1, 65536):x}"


def landline(r: random.Random) -> str:
    area = r.choice(["010", "022", "023", "024", "025", "027", "029", "0731", "0591", "0532", "0512", "0871"])
    local = str(r.randrange(2, 10)) + _d(r, 7 if len(area) == 3 else r.choice([6, 7]))
    return r.choice(
        [f"{area}-{local}", f"{area} {local}", f"（{area}）{local}", f"{area}-{local}-{r.randrange(10, 999)}"]
    )


def passport(r: random.Random) -> str:
    return r.choice([f"E{_d(r, 8)}", f"E{r.choice('ABCDEFGHJKLMN')}{_d(r, 7)}"])


def plate(r: random.Random) -> str:
    prov = r.choice("京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青川宁琼")
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    k = r.randrange(4)
    if k == 0:
        tail = _d(r, 5)
    elif k == 1:
        tail = _d(r, 3) + r.choice(letters) + _d(r, 1)
    elif k == 2:
        tail = r.choice("DF") + r.choice(letters + "0123456789") + _d(r, 4)
    else:
        tail = r.choice(letters) + _d(r, 4)
    return prov + r.choice(letters[:12]) + r.choice(["", "", "·"]) + tail


def name(r: random.Random) -> str:
    return r.choice(SURNAMES) + "".join(r.choice(GIVEN) for _ in range(r.choice([1, 2, 2])))


def address(r: random.Random) -> str:
    prov, city, dist = r.choice(PLACES)
    head = r.choice([prov + city + dist, city + dist]) if prov else city + dist
    tail = r.choice(
        ["", "", f"{r.randrange(1, 30)}栋{r.randrange(1, 5)}单元{r.randrange(1, 30)}0{r.randrange(1, 5)}室"]
    )
    return f"{head}{r.choice(ROADS)}{r.randrange(1, 500)}号{tail}"


VALUES = {
    "id_card": id_card,
    "mobile": mobile,
    "bank_card": bank_card,
    "email": email,
    "ip": ip,
    "landline": landline,
    "passport": passport,
    "plate": plate,
    "name": name,
    "address": address,
}
TEMPLATES = {  # {} is the value; none of these frames is in the development set
    "id_card": [
        "办理入住需要身份证：{}",
        "实名信息 {} 已提交",
        "麻烦核一下这个证件 {}，谢谢",
        "身份证件号码为{}，请妥善保管",
    ],
    "mobile": ["回电{}", "我的新号码是{}，存一下", "手机 {} 微信同号", "骑手电话：{}", "紧急联系人电话{}。"],
    "bank_card": [
        "退款原路退回尾号不对，卡号应为{}",
        "请把钱打到{}这张卡上",
        "借记卡号码：{}",
        "收款账户 {}（建设银行）",
    ],
    "email": ["有问题写信给{}吧", "邮件抄送 {}", "账号绑定的邮箱：{}。", "作者联系方式：{}"],
    "ip": ["来源IP {} 多次尝试登录", "把网关改成{}", "节点 {} 宕机了", "请求来自 {}，已封禁"],
    "landline": ["前台电话{}", "总机：{}", "欢迎拨打{}预约", "办公室座机是{}。"],
    "passport": ["出境用的护照号：{}", "护照 {} 即将过期", "请填写护照号码{}"],
    "plate": ["车牌{}的车主请挪车", "停车场记录到 {} 入场", "肇事车辆为{}，已逃逸", "我的车是{}"],
    "name": [
        "今天和{}一起吃饭",
        "{}经理明天出差",
        "帮我约一下{}医生",
        "快递由{}签收",
        "感谢{}同学的帮助",
        "{}，你的外卖到了",
    ],
    "address": ["收货地址{}", "新家在{}，欢迎来玩", "请到{}取件", "发票寄往{}"],
}


def negative(r: random.Random) -> str:
    k = r.randrange(20)
    if k == 0:
        return f"订单号{r.choice(['', ' ', '：'])}{r.randrange(2023, 2026)}{_d(r, r.choice([14, 16]))}，请核对"
    if k == 1:
        company, code = r.choice([("顺丰", "SF"), ("中通", "ZT"), ("圆通", "YT"), ("京东", "JD")])
        return f"{company}快递单号：{code}{_d(r, r.choice([12, 13, 15]))}"
    if k == 2:
        return f"物流单号{r.choice(['73', '77', '43'])}{_d(r, r.choice([12, 13]))}已签收"
    if k == 3:
        amt = f"{r.randrange(1, 99)},{_d(r, 3)},{_d(r, 3)}.{_d(r, 2)}"
        return r.choice([f"合同金额 ¥{amt}", f"本季度营收{amt}元", f"价格￥{r.randrange(10, 9999)}.00，包邮"])
    if k == 4:
        return f"全年交易额{r.choice('13579')}{_d(r, 10)}元，同比增长{r.randrange(1, 40)}%"
    if k == 5:
        y, m, d = r.randrange(2019, 2026), r.randrange(1, 13), r.randrange(1, 29)
        return r.choice(
            [
                f"{y}-{m:02d}-{d:02d} {r.randrange(24):02d}:{r.randrange(60):02d}",
                f"{y}年{m}月{d}日",
                f"日期{y}{m:02d}{d:02d}",
            ]
        )
    if k == 6:
        return r.choice(
            [f"时间戳 {r.randrange(1600000000, 1760000000)}", f"ts={r.randrange(1600000000000, 1760000000000)}"]
        )
    if k == 7:
        return r.choice(
            [f"商品编码 SKU-{_d(r, 8)}", f"型号 HW-{_d(r, 4)}A", f"货号 E{_d(r, 8)}", f"条形码 69{_d(r, 11)}"]
        )
    if k == 8:
        return r.choice(
            [f"股票代码 {r.choice(['600', '000', '300'])}{_d(r, 3)}", f"基金代码{_d(r, 6)}", "客服热线 400-820-8820"]
        )
    if k == 9:
        born = f"{r.randrange(1950, 2010)}0{r.randrange(1, 10)}1{r.randrange(0, 9)}"
        body = f"{r.choice(PROVINCE_CODES)}{r.randrange(101, 9999):04d}{born}{_d(r, 3)}"
        bad = r.choice([c for c in "0123456789X" if c != _check(body)])
        return r.choice(["编号{}", "档案号{}", "这个号{}校验失败"]).format(body + bad)
    if k == 10:
        body = "6" + _d(r, 14)
        return r.choice(["流水号{}", "交易参考号{}", "会员号 {}"]).format(
            body + str((int(_luhn(body)) + r.randrange(1, 10)) % 10)
        )
    if k == 11:
        return r.choice(["一直向东走两百米", "往西走到路口右转", "向北开十分钟就到", "从南门进，向南走"])
    if k == 12:
        return r.choice(
            ["李宁的新款跑鞋打折", "周大福金店今天人很多", "喝一罐王老吉", "在杨国福吃了麻辣烫", "张小泉的菜刀很好用"]
        )
    if k == 13:
        return r.choice(
            ["石家庄到保定很近", "我们去白云山看日出", "方正县城变化很大", "文昌发射场又有火箭升空", "江西人很能吃辣"]
        )
    if k == 14:
        return r.choice(["验证码 {}，五分钟内有效", "取件码{}", "房间号{}"]).format(_d(r, r.choice([4, 6])))
    if k == 15:
        return r.choice(
            [
                f"版本 {r.randrange(1, 20)}.{r.randrange(30)}.{r.randrange(30)}.{r.randrange(999)}",
                f"固件v{r.randrange(1, 9)}.{r.randrange(9)}.{r.randrange(9)}.{r.randrange(99)}",
            ]
        )
    if k == 16:
        return r.choice(["共{}人报名", "浏览量{}次", "库存{}件"]).format("1" + r.choice("3456789") + _d(r, 9))
    if k == 17:
        return f"第{r.randrange(1, 300)}页第{r.randrange(1, 40)}行，见图{r.randrange(1, 9)}-{r.randrange(1, 9)}"
    if k == 18:
        return r.choice(["湖南卫视的节目", "黄山风景区门票", "万达广场周末有活动", "华为发布了新手机", "常州恐龙园"])
    return r.choice(["每斤12.5元", "折后价¥1,299", "运费8元", "打八折后138元"])


HAND = [  # written separately for this set; [[type|value]] marks a span
    "[[name|欧阳思远]]，你的快递放在[[address|浙江省宁波市鄞州区学院路88号]]门口了",
    "你好，我手机号是[[mobile|一五九 三三二一 八八七六]]，麻烦回个电话",
    "车主[[name|韩雅婷]]，车牌[[plate|浙B·D12345]]，联系电话[[mobile|139-0571-2233]]",
    "转账请用这张卡：[[bank_card|6228 4800 1234 5678 903]]",
    "他给的身份证号[[id_card|42010619850817553x]]我已经录入系统",
    "服务器被[[ip|183.62.11.4]]扫描端口，已加入黑名单",
    "[[name|诸葛文博]]老师的办公电话是[[landline|027-87654321]]",
    "报销单寄到[[address|广东省佛山市顺德区工业大道16号]]，收件人[[name|陶志刚]]",
    "我的护照号[[passport|EJ1234567]]，签证下周出",
    "客户邮箱[[email|yuki.tanaka@outlook.com]]，请尽快回复",
    "电话：[[mobile|１３７ ６５４３ ２１０９]]（白天打）",
    "[[mobile|幺八六幺二三四五六七八]] —— 这是我的新号码，别存错了",
    "订单20240512183015667788已发货，预计三天到",
    "本店地址：华为旗舰店三楼，电话400-830-8300",
    "李宁体育专卖店全场五折",
    "一路向东走到底就是海边",
    "请在2024年6月18日前付款，金额¥13,880.00",
    "SF1402384756221 这个顺丰单号查不到",
    "会议ID 138 123 456，密码 8888",
    "商品条码6901234567892，保质期12个月",
]


# Review misses (Q163), added later as rows of their own (own seed, frames, given names and roads) and
# appended, so the rows above stay as they were: addresses after shipping verbs (寄往/寄到/送到/发往…)
# and names with compound surnames, plus hard negatives that use the same verbs and surnames.
REVIEW_SEED = 77004
REVIEW_SURNAMES = ["诸葛", "欧阳", "司马", "上官", "慕容", "令狐", "夏侯", "皇甫"]
REVIEW_GIVEN = list("明轩若曦天佑静怡一鸣嘉欣书瑶景行冰清雨桐")
REVIEW_ROADS = ["人民南路四段", "解放大道二段", "中山北路", "朝阳街", "环城东路", "府前街"]
REVIEW_TEMPLATES = {
    "address": [
        "包裹寄往{}，麻烦尽快",
        "请把样品寄到{}",
        "鲜花送到{}就行",
        "这批货发往{}",
        "合同原件寄至{}",
        "快递送往{}了吗",
        "麻烦把发票邮寄到{}",
    ],
    "name": [
        "这件事请{}负责",
        "下午{}会来开会",
        "把材料交给{}",
        "{}的报告写得很好",
        "我刚和{}通了电话",
        "麻烦转告{}一声",
    ],
}
REVIEW_NEGATIVES = [  # the verbs and surname characters without an address or a person
    "寄往国外的包裹要报关",
    "送到楼下就行，谢谢",
    "这批货发往全国各地",
    "样品寄到了吗？",
    "发往上海的航班延误了",
    "把东西送到公司前台",
    "请上官方网站查询",
    "东方明珠塔晚上很好看",
]


def review_rows(seed: int = REVIEW_SEED, per_type: int = 40) -> list[dict]:
    r = random.Random(seed)
    rows = []
    for kind in ("address", "name"):
        for _ in range(per_type):
            if kind == "address":
                prov, city, dist = r.choice(PLACES)
                head = r.choice([prov + city + dist, city + dist]) if prov else city + dist
                value = f"{head}{r.choice(REVIEW_ROADS)}{r.randrange(1, 300)}号"
            else:
                value = r.choice(REVIEW_SURNAMES) + "".join(r.choice(REVIEW_GIVEN) for _ in range(r.choice([1, 2])))
            tpl = r.choice(REVIEW_TEMPLATES[kind])
            at = tpl.index("{}")
            rows.append({"text": tpl.replace("{}", value), "spans": [[at, at + len(value), kind]]})
    return rows + [{"text": t, "spans": []} for t in REVIEW_NEGATIVES]


# QQ numbers and WeChat IDs, added later as rows of their own (own seed, appended so the rows above stay as they
# were). The frames are how people write these in chats, listings and forms, written from usage and not from the
# recognizers' cue lists: some cues (企鹅号, Q号, 绿泡泡, +V) are ones the recognizers may not know.
IM_SEED = 77005
IM_TEMPLATES = {
    "qq": [
        "我QQ是{}，加一下",
        "有问题联系QQ：{}",
        "老师的qq {}，作业发这里",
        "加我扣扣{}，备注班级",
        "QQ号码：{}（工作日在线）",
        "售后请加Q号{}",
        "我企鹅号{}，随时找我",
        "腾讯QQ {} 是我小号",
        "联系方式：qq{}",
        "二手转让，私聊Q：{}",
    ],
    "wechat": [
        "微信：{}，加好友请备注",
        "加我微信{}吧",
        "vx {} 同名",
        "我的VX是{}",
        "wx号：{}，拉你进群",
        "微信号 {}（不是手机号）",
        "有意者加V：{}",
        "绿泡泡{}，私聊",
        "WeChat ID: {}",
        "+V {} 咨询",
    ],
}
IM_NEGATIVES = [  # QQ and WeChat named, but no account of a person
    "QQ群：564738291，欢迎加入",
    "QQ音乐会员还有12天到期",
    "用微信支付了128元",
    "今天微信步数12345步",
    "QQ空间访问量23456",
    "关注微信公众号获取更多资讯",
    "QQ飞车等级32了",
    "微信版本8.0.49更新了",
    "QQ邮箱满了，清理一下",
    "用微信扫码登录",
    "微信红包发了200块",
    "QQ和微信都可以找我",
    "vx和qq都行，看你方便",
    "微信运动排名第15",
    "扫码加入QQ群聊",
    "微信读书打卡365天",
]
PINYIN = ["zhang", "li", "wang", "chen", "liu", "yang", "huang", "zhao", "xiaoyu", "lele", "momo", "amy", "tom", "kiki"]


def _qq(r: random.Random) -> str:
    return str(r.randrange(1, 10)) + _d(r, r.randrange(4, 10))  # 5–10 digits, never a leading 0


def _wechat(r: random.Random) -> str:
    if r.random() < 0.15:  # the ID WeChat gives an account that set none
        return "wxid_" + "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(14))
    head = r.choice(PINYIN) + r.choice(["", "_", "-"]) + r.choice(PINYIN + [""])
    head = head[0].upper() + head[1:] if r.random() < 0.3 else head
    tail = r.choice(["", str(r.randrange(1, 100)), str(r.randrange(1980, 2010)), _d(r, 4)])
    value = head + tail
    return value if len(value) >= 6 else value + _d(r, 6 - len(value))


def im_rows(seed: int = IM_SEED, per_type: int = 40) -> list[dict]:
    r = random.Random(seed)
    rows = []
    for kind, make in (("qq", _qq), ("wechat", _wechat)):
        for _ in range(per_type):
            value, tpl = make(r), r.choice(IM_TEMPLATES[kind])
            at = tpl.index("{}")
            rows.append({"text": tpl.replace("{}", value), "spans": [[at, at + len(value), kind]]})
    return rows + [{"text": t, "spans": []} for t in IM_NEGATIVES]


def _fill_hand(line: str) -> dict:
    text, spans, pos = "", [], 0
    for m in re.finditer(r"\[\[(\w+)\|(.+?)\]\]", line):
        text += line[pos : m.start()]
        spans.append([len(text), len(text) + len(m.group(2)), m.group(1)])
        text += m.group(2)
        pos = m.end()
    return {"text": text + line[pos:], "spans": spans}


def build(seed: int = SEED, per_type: int = 60, negatives: int = 480) -> list[dict]:
    r = random.Random(seed)
    rows = []
    for kind, make in VALUES.items():
        for _ in range(per_type):
            value, tpl = make(r), r.choice(TEMPLATES[kind])
            at = tpl.index("{}")
            text, spans = tpl.replace("{}", value), [[at, at + len(value), kind]]
            if r.random() < 0.3:  # a hard negative beside it
                text += "；" + negative(r)
            rows.append({"text": text, "spans": spans})
    rows += [{"text": negative(r), "spans": []} for _ in range(negatives)]
    return rows + [_fill_hand(line) for line in HAND] + review_rows() + im_rows()


if __name__ == "__main__":
    from weitiao.io import write_jsonl

    print(f"wrote {write_jsonl(OUT, build())} rows → {OUT}")
